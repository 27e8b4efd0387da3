"""Write packed rows into megatron-core indexed datasets (.bin/.idx), a fixed number of rows per
shard. In Megatron's terms each row is one *document* whose *sequences* are the row's document
pieces, so the row boundaries and the document boundaries inside a row both survive, and
``IndexedDataset`` reads the shards as they are. A shard is written under temporary names and
renamed when complete; shards a previous run finished (same checksum on disk) are not rewritten."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.utils.fs import file_sha256, staged_file

from .packing import Row


def shard_entry_ok(root: Path, entry: dict) -> bool:
    """The shard's files exist and match the checksums recorded when it was written."""
    bin_path, idx_path = root / f"{entry['prefix']}.bin", root / f"{entry['prefix']}.idx"
    return (
        bin_path.is_file()
        and idx_path.is_file()
        and file_sha256(bin_path) == entry["bin_sha256"]
        and file_sha256(idx_path) == entry["idx_sha256"]
    )


class ShardWriter:
    def __init__(
        self,
        root: Path,
        prefix: str,
        dtype: np.dtype,
        rows_per_shard: int,
        finished: dict[str, dict],
        on_shard: Callable[[dict], None],
    ):
        self.root, self.prefix, self.dtype = root, prefix, dtype
        self.rows_per_shard = rows_per_shard
        self.finished = finished  # prefix -> entry, from an earlier run
        self.on_shard = on_shard
        self.entries: list[dict] = []
        self.written = self.skipped = 0
        self._rows: list[Row] = []

    def add(self, row: Row) -> None:
        self._rows.append(row)
        if len(self._rows) == self.rows_per_shard:
            self._emit()

    def close(self) -> list[dict]:
        if self._rows:
            self._emit()
        return self.entries

    def _emit(self) -> None:
        name = f"{self.prefix}/shard_{len(self.entries):05d}"
        rows, self._rows = self._rows, []
        done = self.finished.get(name)
        tokens = sum(sum(r.segments) for r in rows)
        if done and done["sequences"] == len(rows) and done["tokens"] == tokens and shard_entry_ok(self.root, done):
            self.entries.append(done)
            self.skipped += 1
            return
        entry = self._write(name, rows)
        entry["tokens"] = tokens
        self.entries.append(entry)
        self.written += 1
        self.on_shard(entry)

    def _write(self, name: str, rows: list[Row]) -> dict:
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        final_bin, final_idx = self.root / f"{name}.bin", self.root / f"{name}.idx"
        final_bin.parent.mkdir(parents=True, exist_ok=True)
        with staged_file(final_bin) as tmp_bin, staged_file(final_idx) as tmp_idx:
            builder = IndexedDatasetBuilder(str(tmp_bin), dtype=self.dtype.type)
            for row in rows:
                builder.add_document(row.tokens, row.segments)
            builder.finalize(str(tmp_idx))
            entry = {
                "prefix": name,
                "sequences": len(rows),
                "bin_sha256": file_sha256(tmp_bin),
                "idx_sha256": file_sha256(tmp_idx),
                "bin_bytes": tmp_bin.stat().st_size,
                "idx_bytes": tmp_idx.stat().st_size,
            }
        return entry


class ShardReader:
    """Rows of one shard through megatron-core's ``IndexedDataset``: row i is Megatron document i,
    its sequences are the row's document pieces."""

    def __init__(self, prefix: str | Path):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.dataset = IndexedDataset(str(prefix), mmap=True)
        self.bounds = self.dataset.document_indices

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def row(self, i: int) -> tuple[np.ndarray, list[int]]:
        """(tokens, segment lengths) of row ``i``."""
        first, last = int(self.bounds[i]), int(self.bounds[i + 1])
        pieces = [self.dataset[j] for j in range(first, last)]
        return np.concatenate(pieces), [len(p) for p in pieces]
