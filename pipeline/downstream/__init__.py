"""Downstream evaluation with lm-evaluation-harness: our portable checkpoints (dense and ParScale,
any P) scored by our own forward pass and KV-cached generation, offline tasks shipped in
``tasks/``, and the runner the ``parscale eval --tasks`` command and the in-training evaluator use."""
