"""Read one work unit into documents. Bad records never stop the job: each is yielded as a
rejection with its reason and where it was (file:line, file, or file#row)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .compression import compression, open_binary, stream_errors
from .units import WorkUnit

# rejection reasons, in the order the manifest lists them
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
NOT_TEXT = "not_text"
INVALID_UTF8 = "invalid_utf8"
UNREADABLE = "unreadable"
CORRUPT_STREAM = "corrupt_compressed_stream"
EMPTY = "empty"

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark: some editors put one at the start of a file
#: UTF-16 surrogate code points: JSON can spell one alone (``"\\ud800"``), but no UTF-8 text holds one
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Record:
    where: str
    text: str | None  # None when rejected
    reason: str | None = None


def _jsonl(unit: WorkUnit, field: str) -> Iterator[Record]:
    path = unit.files[0]
    try:
        with open(path, "rb") as handle:
            handle.seek(unit.start)
            data = handle.read(unit.end - unit.start)
    except OSError:
        yield Record(path, None, UNREADABLE)
        return
    if unit.end == 0:
        yield Record(path, None, EMPTY)
        return
    if unit.start == 0:
        data = data.removeprefix(BOM)
    for offset, raw in enumerate(data.split(b"\n")):
        yield from _json_record(raw, field, f"{path}:{unit.first_line + offset}")


def _jsonl_stream(unit: WorkUnit, field: str) -> Iterator[Record]:
    """A compressed JSON-lines file, decompressed line by line; a stream that breaks off ends the
    file with a CORRUPT_STREAM reject at the line where it did (the lines before it count)."""
    path, line = unit.files[0], 0
    try:
        with open_binary(path) as handle:
            for line, raw in enumerate(handle, 1):
                if line == 1:
                    raw = raw.removeprefix(BOM)
                yield from _json_record(raw.rstrip(b"\n"), field, f"{path}:{line}")
    except stream_errors() as exc:
        yield Record(f"{path}:{line + 1} ({type(exc).__name__}: {str(exc)[:100]})", None, CORRUPT_STREAM)


def _json_record(raw: bytes, field: str, where: str) -> Iterator[Record]:
    if not raw.strip():
        return  # blank lines are not records
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        yield Record(where, None, INVALID_UTF8)
        return
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        yield Record(where, None, MALFORMED_JSON)
        return
    yield _field(obj, field, where)


def _field(obj: object, field: str, where: str) -> Record:
    if not isinstance(obj, dict) or field not in obj or obj[field] is None:
        return Record(where, None, MISSING_FIELD)
    value = obj[field]
    if not isinstance(value, str):
        return Record(where, None, NOT_TEXT)
    if _SURROGATE.search(value):
        return Record(where, None, INVALID_UTF8)  # no tokenizer, hash or shard could take it
    return Record(where, value)


def _files(unit: WorkUnit) -> Iterator[Record]:
    for path in unit.files:
        try:
            with open_binary(path) as handle:
                data = handle.read()
        except stream_errors() as exc:
            compressed = compression(path) and not isinstance(exc, FileNotFoundError | PermissionError)
            yield Record(path, None, CORRUPT_STREAM if compressed else UNREADABLE)
            continue
        if not data.strip():
            yield Record(path, None, EMPTY)
            continue
        try:
            yield Record(path, data.removeprefix(BOM).decode("utf-8"))
        except UnicodeDecodeError:
            yield Record(path, None, INVALID_UTF8)


def _parquet(unit: WorkUnit, field: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    path = unit.files[0]
    handle = pq.ParquetFile(path)
    if field not in handle.schema_arrow.names:
        for rg in range(unit.start, unit.end):
            for row in range(handle.metadata.row_group(rg).num_rows):
                yield Record(f"{path}#rg{rg}:{row}", None, MISSING_FIELD)
        return
    for rg in range(unit.start, unit.end):
        column = handle.read_row_group(rg, columns=[field]).column(0).to_pylist()
        for row, value in enumerate(column):
            yield _field({field: value}, field, f"{path}#rg{rg}:{row}")


def _arrow(unit: WorkUnit, field: str) -> Iterator[Record]:
    import datasets

    parts = [datasets.Dataset.from_file(f) for f in unit.files]
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    column = ds.select_columns([field]).select(range(unit.start, unit.end))[field]
    for offset, value in enumerate(column):
        yield _field({field: value}, field, f"{unit.files[0]}#row{unit.start + offset}")


def read_unit(unit: WorkUnit, text_field: str = "text") -> Iterator[Record]:
    """Every record of the unit, in order."""
    if unit.kind == "jsonl":
        return _jsonl(unit, text_field)
    if unit.kind == "jsonl_stream":
        return _jsonl_stream(unit, text_field)
    if unit.kind == "files":
        return _files(unit)
    if unit.kind == "parquet":
        return _parquet(unit, text_field)
    if unit.kind == "arrow":
        return _arrow(unit, text_field)
    raise ValueError(f"unknown unit kind {unit.kind!r}")
