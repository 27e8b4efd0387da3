"""Write packed rows into megatron-core indexed datasets (.bin/.idx), a fixed number of rows per
shard. In Megatron's terms each row is one *document* whose *sequences* are the row's document
pieces, so the row boundaries and the document boundaries inside a row both survive, and
``IndexedDataset`` reads the shards as they are. A shard is written under temporary names and
renamed when complete; shards a previous run finished (same checksum on disk) are not rewritten.

The files are written here with numpy, byte for byte as megatron-core's ``IndexedDatasetBuilder``
writes them (importing megatron-core, and torch with it, would cost prep seconds); they are read
back with megatron-core's own ``IndexedDataset``."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.utils.fs import file_sha256, staged_file

from .packing import Row

#: the .idx file's header: magic and version, as megatron-core's _IndexWriter writes them
INDEX_HEADER = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1)
#: megatron-core's code of each token dtype (its ``DType`` enum)
DTYPE_CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6, "float32": 7, "uint16": 8}


def index_bytes(dtype: np.dtype, rows: list[Row]) -> bytes:
    """The .idx file of ``rows``: each row one Megatron document whose sequences are its pieces."""
    lengths = np.fromiter((len(p) for r in rows for p in r.pieces), np.int32)
    pointers = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    documents = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(np.fromiter((len(r.pieces) for r in rows), np.int64, len(rows)), out=documents[1:])
    head = INDEX_HEADER + struct.pack("<B", DTYPE_CODES[dtype.name])
    counts = struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(documents))
    return head + counts + lengths.tobytes() + pointers.tobytes() + documents.tobytes()


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
        tokens = sum(r.size for r in rows)
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
        """Both files of one shard, hashed as they are written (not read back)."""
        data = np.concatenate([p for r in rows for p in r.pieces]).astype(self.dtype, copy=False)
        index = index_bytes(self.dtype, rows)
        final_bin, final_idx = self.root / f"{name}.bin", self.root / f"{name}.idx"
        with staged_file(final_bin) as tmp_bin, staged_file(final_idx) as tmp_idx:
            with open(tmp_bin, "wb") as handle:
                handle.write(data.data)
            tmp_idx.write_bytes(index)
        return {
            "prefix": name,
            "sequences": len(rows),
            "bin_sha256": hashlib.sha256(data.data).hexdigest(),
            "idx_sha256": hashlib.sha256(index).hexdigest(),
            "bin_bytes": data.nbytes,
            "idx_bytes": len(index),
        }


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
