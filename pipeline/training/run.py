"""One training run in this process, start to end: the trainer of a YAML config, its process groups
torn down after, and the stop signals' handlers put back as they were (so a job that goes on in
the same process after a run still stops on SIGTERM)."""

from __future__ import annotations

import signal

from ..config import LoadedConfig
from ..distributed import destroy_distributed
from .loop import STOP_SIGNALS, Trainer


def train(loaded: LoadedConfig) -> dict:
    """``Trainer.from_loaded(loaded).run()``: ``{"stopped": bool, "step": int, ...}``."""
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        return Trainer.from_loaded(loaded).run()
    finally:
        destroy_distributed()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


__all__ = ["train"]
