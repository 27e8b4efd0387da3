"""Distributed bootstrap in one place: process environment, torch.distributed, megatron-core's
tensor x data parallel groups, DeepSpeed's comm layer and its ``mpu`` adapter, seeding."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..config.errors import ErrorAt, key_error
from ..config.job import JobConfig
from .bootstrap import (
    ParallelContext,
    backend_for,
    destroy_distributed,
    init_distributed,
    local_group,
    preferred_device,
    single_process,
)
from .mpu import MegatronMPU


@contextlib.contextmanager
def distributed_world(cfg: JobConfig, error_at: ErrorAt = key_error) -> Iterator[ParallelContext]:
    """The process groups of ``cfg.parallel`` for the block: brought up on entry, torn down on exit
    (also after an error, or a start that failed halfway), so the process can run another world."""
    try:
        yield init_distributed(cfg, error_at)
    finally:
        destroy_distributed()


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
