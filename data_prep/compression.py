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
        return io.BufferedReader(_ZstdFrames(open(path, "rb")))  # buffered: it iterates by line
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """The decompressed content of every zstd frame in a file, one after another. Unlike
    ``zstandard.open``, which ends quietly where the data ends, a file that stops inside a frame
    raises ``ZstdError`` there, so a truncated ``.zst`` is a corrupt stream as a truncated gzip is."""

    CHUNK = 1 << 17

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._zstd = zstandard
        self._raw = raw
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._pending = memoryview(b"")  # decompressed, not yet read
        self._in_frame = False  # input was fed to the current frame that has not ended yet
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._done:
            self._fill()
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]  # a view: no copy of the rest
        return size

    def _fill(self) -> None:
        data = self._raw.read(self.CHUNK)
        if not data:
            if self._in_frame:
                raise self._zstd.ZstdError("the file ends inside a zstd frame (truncated)")
            self._done = True
            return
        out = []
        while data:
            out.append(self._frame.decompress(data))
            self._in_frame = not self._frame.eof
            if not self._frame.eof:
                break
            data = self._frame.unused_data  # the next frame starts here
            self._frame = self._zstd.ZstdDecompressor().decompressobj()
        self._pending = memoryview(b"".join(out))

    def close(self) -> None:
        self._raw.close()
        super().close()


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
