"""Distributed bootstrap in one place: process environment, torch.distributed, megatron-core's
tensor x data parallel groups, DeepSpeed's comm layer and its ``mpu`` adapter, seeding.

The names below load their module on first use (PEP 562), so the light modules of this package
(``torchrun_main``, the launcher agent of every run; ``hostlist``, called by the SLURM scripts;
``parent_death``; ``runtime``) start without importing megatron-core (measured: 4.5 s of the 6.5 s
the agent took to start on the 2-core machine; ``hostlist`` went from 6.3 s to 0.4 s)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bootstrap import (
        ParallelContext,
        backend_for,
        destroy_distributed,
        distributed_world,
        init_distributed,
        local_group,
        preferred_device,
        single_process,
    )
    from .mpu import MegatronMPU

#: public name -> the submodule that defines it
_LAZY = {
    "ParallelContext": "bootstrap",
    "backend_for": "bootstrap",
    "destroy_distributed": "bootstrap",
    "distributed_world": "bootstrap",
    "init_distributed": "bootstrap",
    "local_group": "bootstrap",
    "preferred_device": "bootstrap",
    "single_process": "bootstrap",
    "MegatronMPU": "mpu",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "MegatronMPU",
    "ParallelContext",
    "backend_for",
    "destroy_distributed",
    "distributed_world",
    "init_distributed",
    "local_group",
    "preferred_device",
    "single_process",
]
