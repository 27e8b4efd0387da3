"""Seeding. Every rank gets the same seed, so megatron-core's TP layers, built with
``use_cpu_initialization``, hold identical master weights before they are split; on CUDA the
model-parallel RNG tracker is seeded too (different streams per TP rank for dropout)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)
