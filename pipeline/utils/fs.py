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

from ..errors import UserError
from .folder_lock import folder_lock, lock_path_beside


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


@contextlib.contextmanager
def full_disk_named(folder: str | Path) -> Iterator[None]:
    """Inside the block, a full disk is an ``OSError(ENOSPC)`` that names a path: a write to an
    open file raises one without a file name, torch's writer a ``RuntimeError``; both get
    ``folder`` (what the block writes) so the message can name where space ran out."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC or exc.filename:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from exc
    except RuntimeError as exc:
        if not out_of_space(exc, folder):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from exc


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: a hidden file in every folder a tool builds with ``staged_dir``, naming the kind of output: a
#: later run may replace a folder only when it names the same kind
OWNER = ".parscale-output"


class TargetError(UserError):
    """An output folder that is not this tool's to write (the message names it; nothing changed)."""


def _owner(folder: Path) -> str | None:
    try:
        return (folder / OWNER).read_text(encoding="utf-8").strip()
    except OSError:
        try:  # a portable checkpoint written before the marker existed
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return (
            "portable checkpoint"
            if isinstance(config, dict) and config.get("format") == "parscale-portable/1"
            else None
        )


def claim_target(target: Path, kind: str, sources: tuple[str | Path, ...] = ()) -> None:
    """Refuse to build ``target`` when it is, holds or sits inside a source, or when it exists,
    is not empty and is not an earlier output of the same ``kind``: a tool never removes what it did
    not write."""
    where = target.resolve()
    for source in sources:
        src = Path(source).resolve()
        if where == src or src in where.parents or where in src.parents:
            relation = "is" if where == src else ("is inside" if src in where.parents else "holds")
            raise TargetError(
                f"{target}: the output folder {relation} the source {source}; choose a target outside it "
                "(nothing was changed)"
            )
    if target.is_dir() and any(target.iterdir()) and _owner(target) != kind:
        raise TargetError(
            f"{target}: exists, is not empty and is not an earlier {kind} output (nothing was changed); "
            "choose a new or empty folder, or remove it yourself"
        )
    if target.exists() and not target.is_dir():
        raise TargetError(f"{target}: exists and is not a folder (nothing was changed)")


@contextlib.contextmanager
def staged_dir(target: str | Path, kind: str, sources: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """A fresh sibling folder to build ``target`` in (``claim_target`` first); renamed onto
    ``target`` (replacing an earlier output of the same ``kind``) only if the block succeeds,
    removed if it raises: no partial output under the final name."""
    target = Path(target)
    with folder_lock(lock_path_beside(target), f"writing a {kind}"):
        claim_target(target, kind, sources)
        yield from _build(target, kind)


def _build(target: Path, kind: str) -> Iterator[Path]:
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / OWNER).write_text(kind + "\n", encoding="utf-8")
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
