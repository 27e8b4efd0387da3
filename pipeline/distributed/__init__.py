"""Distributed bootstrap in one place: process environment, torch.distributed, megatron-core's
tensor x data parallel groups, DeepSpeed's comm layer and its ``mpu`` adapter, seeding."""

from .bootstrap import (
    ParallelContext,
    destroy_distributed,
    init_distributed,
    local_group,
    single_process,
)
from .mpu import MegatronMPU

__all__ = ["MegatronMPU", "ParallelContext", "destroy_distributed", "init_distributed", "local_group", "single_process"]
