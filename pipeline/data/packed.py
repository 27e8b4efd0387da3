"""All rows of one source of a prepared dataset (one split), across its shards, as one indexable
collection of (tokens, segment lengths)."""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from data_prep.manifest import ManifestError, read_manifest, shard_prefixes
from data_prep.shards import ShardReader

from ..errors import UserError


class SourceRows:
    """``vocab``: the tokenizer's ids; a row holding an id past them (a shard damaged since it was
    written, at the same size) is refused naming the shard, never an IndexError in the embedding."""

    def __init__(self, name: str, prefixes: list[str], vocab: int | None = None):
        self.name, self.prefixes, self.vocab = name, prefixes, vocab
        self.readers = [ShardReader(p) for p in prefixes]
        self.starts = np.cumsum([0] + [len(r) for r in self.readers]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def row(self, i: int) -> tuple[np.ndarray, list[int]]:
        shard = bisect.bisect_right(self.starts, i) - 1
        tokens, lengths = self.readers[shard].row(i - self.starts[shard])
        if self.vocab is not None and tokens.size and int(tokens.max()) >= self.vocab:
            raise UserError(
                f"{self.prefixes[shard]}.bin: row {i - self.starts[shard]} holds token id {int(tokens.max())}, past the "
                f"tokenizer's {self.vocab} ids: the shard was damaged since it was written. Set train.verify_data: "
                "sha256 to find every damaged shard, and rerun 'parscale prep' with its config to rewrite them"
            )
        return tokens, lengths


def open_sources(
    directory: str | Path, split: str, tokenizer_sha256: str | None = None
) -> list[tuple[SourceRows, float]]:
    """(rows, weight) for every source of a prepared dataset that has rows in ``split``."""
    manifest = read_manifest(directory)
    if tokenizer_sha256 is not None and manifest["tokenizer"]["sha256"] != tokenizer_sha256:
        raise ManifestError(
            f"{Path(directory) / 'manifest.json'}: tokenized with tokenizer sha256 "
            f"{manifest['tokenizer']['sha256'][:16]}..., but the other training data used {tokenizer_sha256[:16]}..."
        )
    vocab = manifest["tokenizer"]["vocab_size"]
    return [(SourceRows(name, prefixes, vocab), weight) for name, weight, prefixes in shard_prefixes(directory, split)]
