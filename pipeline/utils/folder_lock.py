"""One writer per folder: an exclusive ``flock`` on a lock file, held while a command writes (a
training run's folder by its rank 0, a prep output folder, a converter's target), released on any
exit (the kernel drops it when the process dies, kill -9 included). A second command on the same
folder is refused at once, naming the holder's pid, host and command. Re-entrant within a process
(the main job holds its folder while its stages take theirs)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".parscale.lock"
#: how long a run or a job waits for the lock of a holder that is dying (a kill -9 just before a rerun)
RERUN_GRACE_S = 15.0
_HELD: dict[str, int] = {}  # lock files this process holds -> depth


class FolderInUse(UserError):
    """Another process writes the folder (the message names it and the holder)."""


def lock_path_in(folder: str | Path) -> Path:
    """The lock of a folder that stays in place (a run, prepared data)."""
    return Path(folder) / LOCK_NAME


def lock_path_beside(target: str | Path) -> Path:
    """The lock of a folder that is replaced whole (a converter's output)."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _acquire(path: Path, what: str, wait: float) -> int:
    """An open descriptor of ``path`` holding its exclusive lock (the file is the one at ``path``:
    a holder that released and removed it in between is not mistaken for a free lock). A busy lock
    is tried again for ``wait`` seconds: a holder just killed keeps its files until the kernel has
    torn its memory down, which can take seconds on a loaded machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise FolderInUse(
                f"{path.parent}: in use by {_holder(path)} ({what}); wait for it to end or stop it "
                "(two writers would mix their files)"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # removed by its last holder after we opened it: take the new one


@contextlib.contextmanager
def folder_lock(path: str | Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock file ``path`` (``lock_path_in`` / ``lock_path_beside``) for the block, trying
    a busy one again for ``wait`` seconds first."""
    key = str(Path(path).resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    path = Path(path)
    fd = _acquire(path, what, wait)
    _HELD[key] = 1
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(record).encode())
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: a waiter that opened it retries on the new file
        os.close(fd)
