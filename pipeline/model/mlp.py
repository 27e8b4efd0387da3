"""SwiGLU feed-forward on megatron-core tensor-parallel linears: gate and up split by columns,
down by rows (one all-reduce)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, tensor_parallel
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, ffn: int, mp: ModelParallelConfig, init, out_init):
        super().__init__()
        column = dict(config=mp, init_method=init, bias=False, gather_output=False)
        self.gate_proj = tensor_parallel.ColumnParallelLinear(hidden, ffn, **column)
        self.up_proj = tensor_parallel.ColumnParallelLinear(hidden, ffn, **column)
        self.down_proj = tensor_parallel.RowParallelLinear(
            ffn, hidden, config=mp, init_method=out_init, bias=False, input_is_parallel=True, skip_bias_add=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, _ = self.gate_proj(x)
        up, _ = self.up_proj(x)
        out, _ = self.down_proj(F.silu(gate) * up)
        return out
