"""Tensor-parallel collectives that megatron-core only implements with CUDA buffers
(``torch.cuda.current_device()``), written against any device so they also run on CPU/gloo."""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps

from ..utils.collectives import all_gather_cat


def _tp():
    return ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()


def gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every TP rank's slice along the last dim (no gradient)."""
    group, size = _tp()
    if size == 1:
        return x
    return all_gather_cat(x, -1, group)


class _ScatterLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        group, size = _tp()
        chunk = x.shape[-1] // size
        rank = ps.get_tensor_model_parallel_rank()
        return x[..., rank * chunk : (rank + 1) * chunk].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return gather_last_dim(grad)


def scatter_last_dim(x: torch.Tensor) -> torch.Tensor:
    """This rank's slice of the last dim; the backward all-gathers, so a replicated producer gets
    the same, complete gradient on every rank."""
    if _tp()[1] == 1:
        return x
    return _ScatterLastDim.apply(x)
