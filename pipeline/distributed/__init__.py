"""Distributed bootstrap in one place: process environment, torch.distributed, megatron-core's
tensor x data parallel groups, DeepSpeed's comm layer and its ``mpu`` adapter, seeding."""

from .runtime import quiet_known_warnings

quiet_known_warnings()  # before megatron-core is imported below

from .bootstrap import (  # noqa: E402
    ParallelContext, destroy_distributed, init_distributed, local_group, single_process,
)
from .mpu import MegatronMPU  # noqa: E402

__all__ = ["MegatronMPU", "ParallelContext", "destroy_distributed", "init_distributed", "local_group", "single_process"]
