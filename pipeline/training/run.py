"""One training run in this process, start to end: the trainer of a YAML config, its process groups
torn down after, and the stop signals' handlers put back as they were (so a job that goes on in
the same process after a run still stops on SIGTERM)."""

from __future__ import annotations

import os
import signal
from contextlib import nullcontext

from ..config import LoadedConfig
from ..distributed import destroy_distributed
from ..utils.folder_lock import RERUN_GRACE_S, folder_lock, lock_path_in
from .loop import STOP_SIGNALS, Trainer


def train(loaded: LoadedConfig) -> dict:
    """``Trainer.from_loaded(loaded).run()``: ``{"stopped": bool, "step": int, ...}``; rank 0 holds
    the run folder's lock throughout (a second run on the folder is refused, naming this one)."""
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    rank0 = int(os.environ.get("RANK", "0")) == 0
    lock = (
        folder_lock(lock_path_in(loaded.config.run.output_dir), "a training run", RERUN_GRACE_S)
        if rank0
        else nullcontext()
    )
    try:
        with lock:
            return Trainer.from_loaded(loaded).run()
    finally:
        destroy_distributed()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


__all__ = ["train"]
