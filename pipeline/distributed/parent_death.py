"""A rank started by a launcher dies with it. torchrun starts each rank in a session of its own, so
a kill -9 of the launcher (or of its process group) used to leave the ranks training to the end,
and "rerun to resume" then started a second writer beside them. Linux's parent-death signal makes
the kernel kill the rank when its launcher goes, however it goes."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def launched_rank() -> bool:
    """Whether this process is a rank that torchrun (its elastic agent) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def die_with_parent() -> bool:
    """Ask the kernel for SIGKILL when the parent exits; exit now if it already has. False where
    the system has no such signal (not Linux): nothing changes there."""
    parent = os.getppid()
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died before the request: nothing would signal us
        os._exit(1)
    return True
