"""Plan a prep job: expand every configured source into work units (a byte range of a JSONL file,
a run of Parquet row groups, a group of small files, a row range of an Arrow dataset) of about
``data.unit_mb`` each. Units are the grain of parallel tokenization and of resume. Missing inputs
are refused here, before any work starts."""

from __future__ import annotations

import fnmatch
import glob
import os
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.config.data import DataConfig

from .compression import compression, header_problem

BLOCK = 1 << 23  # bytes read at a time when scanning JSONL for line boundaries


#: what a jsonl source directory is searched for: plain and compressed JSON lines
JSONL_PATTERNS = ("**/*.jsonl", "**/*.jsonl.gz", "**/*.jsonl.zst")


class InputError(ValueError):
    """A source that cannot be read at all: missing path, no matching file, empty corpus."""


@dataclass(frozen=True)
class WorkUnit:
    source: int  # index into data.sources
    index: int  # position within its source
    kind: str  # "jsonl" | "jsonl_stream" (compressed) | "parquet" | "files" | "arrow"
    files: tuple[str, ...] = ()
    start: int = 0  # jsonl: byte offset; parquet: first row group; arrow: first row
    end: int = 0  # exclusive
    first_line: int = 1  # jsonl: line number of the byte at ``start``
    size: int = 0  # input bytes, for progress

    @property
    def key(self) -> str:
        return f"{self.source:03d}-{self.index:06d}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkUnit:
        return cls(**{**data, "files": tuple(data["files"])})


@dataclass
class SourcePlan:
    name: str
    units: list[WorkUnit] = field(default_factory=list)


def stdlib_root() -> Path:
    """The running interpreter's standard library: the embedded default corpus."""
    return Path(sysconfig.get_paths()["stdlib"])


def _expand(path: str, patterns: str | tuple[str, ...], key: str, exclude: list[str] = ()) -> list[str]:
    """A file, a directory searched with ``patterns`` (minus ``exclude``), or a glob; sorted, never
    empty; a compressed file whose header is not its format's is refused, naming it."""
    patterns = (patterns,) if isinstance(patterns, str) else patterns
    if any(ch in path for ch in "*?["):
        found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(path):
        root = Path(path)
        found = sorted(
            {
                str(p)
                for pattern in patterns
                for p in root.glob(pattern)
                if p.is_file() and not any(fnmatch.fnmatch(str(p.relative_to(root)), x) for x in exclude)
            }
        )
    elif os.path.isfile(path):
        found = [path]
    else:
        raise InputError(f"{key}: input path does not exist: {path}")
    if not found:
        raise InputError(f"{key}: no files match {path!r} (pattern {' or '.join(map(repr, patterns))})")
    for f in found:
        if problem := header_problem(f):
            raise InputError(f"{key}: {problem}")
    return found


def _group_files(files: list[str], source: int, unit_bytes: int) -> list[WorkUnit]:
    units, batch, size = [], [], 0
    for f in files:
        try:
            n = os.path.getsize(f)
        except OSError:
            n = 0  # unreadable: the reader counts it
        batch.append(f)
        size += n
        if size >= unit_bytes:
            units.append(WorkUnit(source, len(units), "files", tuple(batch), size=size))
            batch, size = [], 0
    if batch:
        units.append(WorkUnit(source, len(units), "files", tuple(batch), size=size))
    return units


def _jsonl_units(files: list[str], source: int, unit_bytes: int) -> list[WorkUnit]:
    """Cut each file at the first newline after every ``unit_bytes``, counting lines on the way; a
    compressed file (no seeking into it) is one unit, read as a stream."""
    units = []
    for f in files:
        if compression(f):
            units.append(WorkUnit(source, len(units), "jsonl_stream", (f,), size=os.path.getsize(f)))
            continue
        try:
            total = os.path.getsize(f)
            handle = open(f, "rb")
        except OSError:
            total = 0
        if total == 0:  # empty or unreadable: one unit, so the reader counts it
            units.append(WorkUnit(source, len(units), "jsonl", (f,), 0, 0, 1, 0))
            continue
        start, line = 0, 1
        with handle:
            while start < total:
                target = min(total, start + unit_bytes)
                handle.seek(start)
                chunk = handle.read(target - start)
                end = target
                while end < total:  # extend to the end of the current line
                    more = handle.read(BLOCK)
                    cut = more.find(b"\n")
                    if cut >= 0:
                        chunk += more[: cut + 1]
                        end += cut + 1
                        break
                    chunk += more
                    end += len(more)
                units.append(WorkUnit(source, len(units), "jsonl", (f,), start, end, line, end - start))
                line += chunk.count(b"\n")
                start = end
    return units


def _parquet_units(files: list[str], source: int, unit_bytes: int) -> list[WorkUnit]:
    import pyarrow.parquet as pq

    units = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        first, size = 0, 0
        for rg in range(meta.num_row_groups):
            size += meta.row_group(rg).total_byte_size
            if size >= unit_bytes or rg == meta.num_row_groups - 1:
                units.append(WorkUnit(source, len(units), "parquet", (f,), first, rg + 1, size=size))
                first, size = rg + 1, 0
    return units


def _arrow_units(files: list[str], rows: int, nbytes: int, source: int, unit_bytes: int) -> list[WorkUnit]:
    per_row = max(1, nbytes // max(1, rows))
    step = max(1, unit_bytes // per_row)
    return [
        WorkUnit(
            source,
            i,
            "arrow",
            tuple(files),
            start,
            min(rows, start + step),
            size=(min(rows, start + step) - start) * per_row,
        )
        for i, start in enumerate(range(0, rows, step))
    ]


def _hf_dataset(src, key: str):
    """Open a local Hugging Face dataset (never the hub) and pick the configured split."""
    import datasets

    if src.type == "hf_disk":
        if not os.path.isdir(src.path):
            raise InputError(f"{key}: input path does not exist: {src.path}")
        ds = datasets.load_from_disk(src.path)
    else:
        files = _expand(src.path, "**/*", key)
        ds = datasets.load_dataset(src.builder, data_files=files)
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise InputError(f"{key}.split: {src.split!r} not in {sorted(ds)}")
        ds = ds[src.split]
    if src.text_field not in ds.column_names:
        raise InputError(f"{key}.text_field: no column {src.text_field!r} (columns: {ds.column_names})")
    return ds


def source_name(src) -> str:
    """The configured name, else the type and the input's file or folder name."""
    if src.name:
        return src.name
    if src.type == "stdlib":
        return "stdlib"
    return f"{src.type}-{Path(src.path.rstrip('/')).stem or 'input'}"


def plan(data: DataConfig) -> list[SourcePlan]:
    """Every source's work units, in a fixed order; raises InputError naming the config key."""
    unit_bytes = int(data.unit_mb * (1 << 20))
    plans, names = [], set()
    for i, src in enumerate(data.sources):
        key = f"data.sources[{i}]"
        name = source_name(src)
        if name in names:
            raise InputError(f"{key}.name: {name!r} is used by another source; give each source a distinct name")
        names.add(name)
        if src.type == "jsonl":
            units = _jsonl_units(_expand(src.path, JSONL_PATTERNS, f"{key}.path"), i, unit_bytes)
        elif src.type == "parquet":
            units = _parquet_units(_expand(src.path, "**/*.parquet", f"{key}.path"), i, unit_bytes)
        elif src.type in ("text", "code"):
            units = _group_files(_expand(src.path, src.glob, f"{key}.path", src.exclude), i, unit_bytes)
        elif src.type == "stdlib":
            units = _group_files(_expand(str(stdlib_root()), src.glob, f"{key}.glob", src.exclude), i, unit_bytes)
        else:
            ds = _hf_dataset(src, key)
            files = [c["filename"] for c in ds.cache_files]
            if not files:
                raise InputError(f"{key}: dataset at {src.path} is in memory only; save it with save_to_disk")
            units = _arrow_units(files, ds.num_rows, ds.data.nbytes, i, unit_bytes)
        plans.append(SourcePlan(name, units))
    if not any(p.units for p in plans):
        raise InputError("data.sources: the corpus is empty (no input units)")
    return plans
