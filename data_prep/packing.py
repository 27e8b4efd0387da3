"""Pack tokenized documents (each ending in EOD) into rows of ``row_len`` = seq_len + 1 tokens.

- ``concat``: the classic concatenate-and-chunk; no padding (bar the very last row), documents
  that straddle a row boundary are cut.
- ``best_fit``: Best-fit packing (Ding et al. 2024, "Fewer Truncations Improve Language
  Modeling"): documents longer than a row are cut into row-sized chunks, then every chunk in a
  window is placed, longest first, into the open row with the least room that still fits it. A
  document shorter than a row is never cut; the price is a little padding.

Each row keeps its segment lengths (document pieces, in order), so training can restart positions
and mask attention at document boundaries. Rows shorter than ``row_len`` are padded at load time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class Row:
    pieces: list[np.ndarray]
    size: int  # tokens in it: the sum of the pieces' lengths

    @property
    def segments(self) -> list[int]:
        return [len(p) for p in self.pieces]

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate(self.pieces) if len(self.pieces) > 1 else self.pieces[0]


@dataclass
class PackStats:
    rows: int = 0
    tokens: int = 0
    padding: int = 0
    documents: int = 0
    truncated_documents: int = 0  # documents cut across two or more rows

    def count(self, row: Row, row_len: int) -> Row:
        self.rows += 1
        self.tokens += row.size
        self.padding += row_len - row.size
        return row

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class ConcatPacker:
    def __init__(self, row_len: int):
        self.row_len = row_len
        self.pieces: list[np.ndarray] = []
        self.fill = 0
        self.stats = PackStats()

    def add(self, doc: np.ndarray) -> Iterator[Row]:
        self.stats.documents += 1
        if len(doc) > self.row_len - self.fill:
            self.stats.truncated_documents += 1
        while len(doc):
            take = min(self.row_len - self.fill, len(doc))
            self.pieces.append(doc[:take])
            self.fill += take
            doc = doc[take:]
            if self.fill == self.row_len:
                yield self.stats.count(Row(self.pieces, self.fill), self.row_len)
                self.pieces, self.fill = [], 0

    def flush(self) -> Iterator[Row]:
        if self.pieces:
            yield self.stats.count(Row(self.pieces, self.fill), self.row_len)
            self.pieces, self.fill = [], 0


class BestFitPacker:
    def __init__(self, row_len: int, window: int):
        self.row_len = row_len
        self.window = window
        self.chunks: list[np.ndarray] = []
        self.stats = PackStats()

    def add(self, doc: np.ndarray) -> Iterator[Row]:
        self.stats.documents += 1
        if len(doc) > self.row_len:
            self.stats.truncated_documents += 1
        self.chunks.extend(doc[i : i + self.row_len] for i in range(0, len(doc), self.row_len))
        if len(self.chunks) >= self.window:
            yield from self._pack()

    def flush(self) -> Iterator[Row]:
        yield from self._pack()

    def _pack(self) -> Iterator[Row]:
        sizes = [len(c) for c in self.chunks]
        order = np.argsort(-np.array(sizes, np.int64), kind="stable").tolist()  # longest first, ties in order
        rows: list[list[np.ndarray]] = []
        used: list[int] = []
        room: list[tuple[int, int]] = []  # (space left, row id) of rows not full, kept sorted
        for i in order:
            chunk, size = self.chunks[i], sizes[i]
            if size == self.row_len:  # a full row of its own: no open row has room for it
                rows.append([chunk])
                used.append(size)
                continue
            at = bisect.bisect_left(room, (size, -1))
            if at == len(room):
                rows.append([chunk])
                used.append(size)
                space, row_id = self.row_len - size, len(rows) - 1
            else:
                space, row_id = room.pop(at)
                rows[row_id].append(chunk)
                used[row_id] += size
                space -= size
            if space > 0:
                bisect.insort(room, (space, row_id))
        self.chunks = []
        for pieces, size in zip(rows, used, strict=True):
            yield self.stats.count(Row(pieces, size), self.row_len)


def make_packer(strategy: str, row_len: int, window: int):
    if strategy == "concat":
        return ConcatPacker(row_len)
    if strategy == "best_fit":
        return BestFitPacker(row_len, window)
    raise ValueError(f"packing.strategy: unknown {strategy!r}")
