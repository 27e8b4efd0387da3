"""Seeding. Every rank gets the same seed, so megatron-core's TP layers, built with
``use_cpu_initialization``, hold identical master weights before they are split; on CUDA the
model-parallel RNG tracker is seeded too (different streams per TP rank for dropout)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, cuda: bool = False) -> None:
    """Python, NumPy and torch; with ``cuda`` (a world on a GPU) also megatron-core's CUDA RNG
    tracker, which touches the device: a host world must not, even where GPUs are visible."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if cuda:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)
