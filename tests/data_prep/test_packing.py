"""Packing strategies: every token kept exactly once and in order, boundaries right, rows full
where the strategy promises, best-fit cutting fewer documents than concat."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.packing import BestFitPacker, ConcatPacker, make_packer

ROW = 64


def _docs(seed: int, n: int = 300) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([rng.integers(2, 40, n - 10), rng.integers(65, 300, 10)])  # some longer than a row
    rng.shuffle(lengths)
    docs, next_id = [], 10
    for length in lengths:  # every token distinct, so order and multiplicity are checkable
        docs.append(np.arange(next_id, next_id + length, dtype=np.int64))
        next_id += length
    return docs


def _pack(packer, docs):
    rows = [row for doc in docs for row in packer.add(doc)]
    return rows + list(packer.flush())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concat_keeps_every_token_once_in_order(seed):
    docs = _docs(seed)
    packer = ConcatPacker(ROW)
    rows = _pack(packer, docs)
    assert np.array_equal(np.concatenate([r.tokens for r in rows]), np.concatenate(docs))
    assert all(len(r.tokens) == ROW for r in rows[:-1]) and 0 < len(rows[-1].tokens) <= ROW
    # segment boundaries fall exactly on document boundaries or row edges
    doc_ends = set(np.cumsum([len(d) for d in docs]).tolist())
    position = 0
    for row in rows:
        assert sum(row.segments) == len(row.tokens)
        for seg in row.segments[:-1]:
            position += seg
            assert position in doc_ends
        position += row.segments[-1]
    s = packer.stats
    assert s.documents == len(docs) and s.tokens == sum(map(len, docs)) and s.padding == ROW * s.rows - s.tokens
    assert s.padding < ROW


@pytest.mark.parametrize("seed, window", [(0, 16), (1, 64), (2, 10_000)])
def test_best_fit_keeps_every_document_whole_when_it_fits(seed, window):
    docs = _docs(seed)
    packer = BestFitPacker(ROW, window)
    rows = _pack(packer, docs)
    pieces = [p for r in rows for p in r.pieces]
    assert all(len(r.tokens) <= ROW for r in rows)
    # every token exactly once
    assert np.array_equal(np.sort(np.concatenate(pieces)), np.sort(np.concatenate(docs)))
    # each piece is a contiguous run of one document; short documents are never cut
    starts = {int(d[0]): d for d in docs}
    by_doc: dict[int, list[np.ndarray]] = {}
    for piece in pieces:
        owner = next(d for d in docs if d[0] <= piece[0] <= d[-1])
        assert np.array_equal(piece, owner[piece[0] - owner[0] : piece[0] - owner[0] + len(piece)])
        by_doc.setdefault(int(owner[0]), []).append(piece)
    for first, parts in by_doc.items():
        doc = starts[first]
        if len(doc) <= ROW:
            assert len(parts) == 1
        else:  # long documents: row-sized chunks, in order
            assert np.array_equal(np.concatenate(sorted(parts, key=lambda p: p[0])), doc)
            assert len(parts) == -(-len(doc) // ROW)
    s = packer.stats
    assert s.truncated_documents == sum(len(d) > ROW for d in docs)
    assert s.tokens == sum(map(len, docs)) and s.padding == ROW * s.rows - s.tokens


def test_best_fit_cuts_fewer_documents_than_concat_at_little_padding():
    docs = _docs(7, 2000)
    concat, best = ConcatPacker(ROW), BestFitPacker(ROW, 512)
    _pack(concat, docs)
    _pack(best, docs)
    assert best.stats.truncated_documents < concat.stats.truncated_documents / 3
    assert best.stats.padding / (best.stats.rows * ROW) < 0.05


def test_best_fit_rows_do_not_depend_on_how_docs_arrive():
    docs = _docs(3)
    a = _pack(BestFitPacker(ROW, 50), docs)
    b = _pack(BestFitPacker(ROW, 50), [d.copy() for d in docs])
    assert [r.segments for r in a] == [r.segments for r in b]
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b, strict=True))


def test_unknown_strategy():
    with pytest.raises(ValueError, match="packing.strategy"):
        make_packer("zigzag", ROW, 10)
