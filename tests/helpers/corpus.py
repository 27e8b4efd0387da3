"""Small corpora of every input type, written fresh for a test, with known bad records."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega"
).split()


def text_doc(i: int, n_words: int = 0) -> str:
    n = n_words or 5 + (i * 7) % 60
    words = [WORDS[(i * 3 + k * k) % len(WORDS)] for k in range(n)]
    return f"doc {i}: " + " ".join(words) + (f"\n    x = {i}\n" if i % 3 == 0 else "")


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for d in docs:
            handle.write(json.dumps({field: d, "id": len(d)}) + "\n")
    return path


def write_bad_jsonl(path: Path) -> dict[str, list[int]]:
    """Good lines mixed with every kind of bad one; returns the bad line numbers by reason."""
    lines = [
        json.dumps({"text": text_doc(1)}).encode(),  # 1 ok
        b'{"text": "unterminated',  # 2 malformed_json
        json.dumps({"body": "no text field"}).encode(),  # 3 missing_field
        json.dumps({"text": 12345}).encode(),  # 4 not_text
        b'{"text": "caf\xe9 latin-1 bytes"}',  # 5 invalid_utf8
        b"",  # 6 blank: not a record
        json.dumps({"text": "   "}).encode(),  # 7 too_short (whitespace only)
        json.dumps({"text": text_doc(2)}).encode(),  # 8 ok
        json.dumps({"text": None}).encode(),  # 9 missing_field
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {"malformed_json": [2], "missing_field": [3, 9], "not_text": [4], "invalid_utf8": [5], "too_short": [7]}


def write_parquet(path: Path, docs: list[str], rows_per_group: int = 7) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"content": docs, "n": list(range(len(docs)))}), path, row_group_size=rows_per_group)
    return path


def write_tree(root: Path, docs: list[str], suffix: str) -> Path:
    for i, d in enumerate(docs):
        path = root / f"pkg{i % 3}" / f"file_{i:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(d, encoding="utf-8")
    return root


def write_hf_disk(path: Path, docs: list[str]) -> Path:
    import datasets

    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(path))
    return path
