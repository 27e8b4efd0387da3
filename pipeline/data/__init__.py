"""Training data: packed rows from data_prep shards, blended by weight in a deterministic global
order, sliced per data-parallel rank."""
