"""Compressed corpora: gzip (``.gz``) and zstd (``.zst``) files, read as streams by extension.
A file whose first bytes are not its format's magic number is refused before any work starts; a
stream that breaks off later (truncated, corrupt) ends that file's records with a named reject."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import BinaryIO

#: extension -> (format name, magic number)
FORMATS = {".gz": ("gzip", b"\x1f\x8b"), ".zst": ("zstd", b"\x28\xb5\x2f\xfd")}


def compression(path: str | Path) -> str | None:
    """The extension of a compressed file (".gz", ".zst"), or None for a plain one."""
    suffix = Path(path).suffix
    return suffix if suffix in FORMATS else None


def open_binary(path: str | Path) -> BinaryIO:
    """A binary stream of the file's content, decompressed on the fly."""
    kind = compression(path)
    if kind == ".gz":
        return gzip.open(path, "rb")
    if kind == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.open(path, "rb"))  # buffered: it iterates by line
    return open(path, "rb")


def header_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a file of the format its extension names (None when it can be)."""
    kind = compression(path)
    if kind is None:
        return None
    name, magic = FORMATS[kind]
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(magic))
    except OSError as exc:
        return f"{path}: unreadable ({exc})"
    if head != magic:
        return f"{path}: not a {name} file, though its name ends in {kind} (rename it, or recompress it)"
    return None


#: what a broken stream raises: gzip's and zstd's errors, and EOF inside a gzip member
def stream_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zstandard.ZstdError)


__all__ = ["FORMATS", "compression", "header_problem", "open_binary", "stream_errors"]
