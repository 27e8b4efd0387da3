"""One training run in this process, start to end: the run folder's lock, the process groups and
the stop signals' handlers, each held for the run and given back after it (so a job that goes on
in the same process after a run can start another world and still stops on SIGTERM)."""

from __future__ import annotations

import os
from contextlib import nullcontext

from ..config import LoadedConfig
from ..distributed import distributed_world
from ..utils.folder_lock import RERUN_GRACE_S, folder_lock, lock_path_in
from .signals import stop_signals
from .trainer import Trainer


def train(loaded: LoadedConfig) -> dict:
    """``Trainer.from_loaded(loaded, ...).run()``: ``{"stopped": bool, "step": int, ...}``; rank 0
    holds the run folder's lock throughout (a second run on the folder is refused, naming this one)."""
    rank0 = int(os.environ.get("RANK", "0")) == 0
    lock = (
        folder_lock(lock_path_in(loaded.config.run.output_dir), "a training run", RERUN_GRACE_S)
        if rank0
        else nullcontext()
    )
    with lock, distributed_world(loaded.config, loaded.error) as ctx, stop_signals() as stop:
        return Trainer.from_loaded(loaded, ctx, stop).run()


__all__ = ["train"]
