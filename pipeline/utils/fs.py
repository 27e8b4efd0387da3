"""Filesystem helpers: writes that never leave a half-written file under the final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` (a dot-file, which readers skip) to write ``path``
    under; renamed onto ``path`` only if the block succeeds, removed if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file gets the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` beside ``path``, fsync it, then rename it into place."""
    with staged_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def read_format_json(path: str | Path, expected_format: str, error: type[Exception], missing_hint: str) -> dict:
    """A JSON object whose "format" field must equal ``expected_format``; every failure raises
    ``error`` naming the file (``missing_hint`` says what to do when it does not exist)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: not found ({missing_hint})") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path}: format {found!r}, expected {expected_format!r}")
    return data


#: below this many free bytes, a failed write is taken for a full disk (torch's writer says only
#: "file write failed", without the OS error)
NEARLY_FULL = 1 << 20


def out_of_space(exc: BaseException, path: str | Path) -> bool:
    """Whether ``exc`` (or an error that caused it, Ray's wrapped ones included) is a full disk,
    or the disk holding ``path`` is full now."""
    seen: BaseException | None = exc
    for _ in range(16):  # causes chain; bounded against cycles
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < NEARLY_FULL
    except OSError:
        return False


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """A fresh sibling folder to build ``target`` in; renamed onto ``target`` (replacing it) only
    if the block succeeds, removed if it raises: no partial output under the final name."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
