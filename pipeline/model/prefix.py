"""ParScale's per-layer prefixes: for each of the P streams, ``prefix_len`` learnable keys and
values per KV head, prepended to the layer's keys/values (no RoPE, no positions, visible to every
query). Under tensor parallelism each rank holds its KV heads' slice.

Two parameterisations: ``normal`` holds ``prefix_k``/``prefix_v`` directly (normal(0, std) init);
``mlp`` (the paper's appendix, after prefix tuning) produces them from a small seed through a
two-layer MLP, replicated across TP ranks with gradients gathered back to every rank."""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from torch import nn

from ..config.model import ParScaleConfig
from .tp_ops import scatter_last_dim


class StreamPrefix(nn.Module):
    def __init__(self, ps: ParScaleConfig, n_kv: int, head_dim: int, tp_rank: int, tp_size: int):
        super().__init__()
        self.streams, self.length, self.n_kv, self.head_dim = ps.streams, ps.prefix_len, n_kv, head_dim
        self.mode = ps.prefix_init
        self.collapsed = False  # every stream gets the streams' mean prefix (diagnostics: the diversity gain)
        local = n_kv // tp_size
        heads = slice(tp_rank * local, (tp_rank + 1) * local)
        if self.mode == "normal":
            shape = (ps.streams, n_kv, ps.prefix_len, head_dim)  # full tensors drawn on every rank: same RNG use
            k = torch.randn(shape) * ps.prefix_init_std
            v = torch.randn(shape) * ps.prefix_init_std
            self.prefix_k = nn.Parameter(k[:, heads].contiguous())
            self.prefix_v = nn.Parameter(v[:, heads].contiguous())
            for p in (self.prefix_k, self.prefix_v):
                tensor_parallel.set_tensor_model_parallel_attributes(p, is_parallel=True, dim=1, stride=1)
        else:
            r = ps.prefix_mlp_hidden
            self.seed = nn.Parameter(torch.randn(ps.streams, ps.prefix_len, r) * ps.prefix_init_std)
            self.mlp = nn.Sequential(nn.Linear(r, r), nn.Tanh(), nn.Linear(r, 2 * n_kv * head_dim))
            for layer in (self.mlp[0], self.mlp[2]):
                nn.init.normal_(layer.weight, std=ps.prefix_init_std)
                nn.init.zeros_(layer.bias)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Local prefix keys and values, each [P, local KV heads, prefix_len, head_dim]."""
        k, v = self._streams()
        if self.collapsed:
            return k.mean(0, keepdim=True).expand_as(k), v.mean(0, keepdim=True).expand_as(v)
        return k, v

    def _streams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "normal":
            return self.prefix_k, self.prefix_v
        out = self.mlp(self.seed)  # [P, L, 2 * n_kv * d], KV heads outermost within each half
        out = out.view(self.streams, self.length, 2, self.n_kv * self.head_dim)
        out = scatter_last_dim(out)  # this rank's heads; gradients gathered back
        out = out.view(self.streams, self.length, 2, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        return out[0], out[1]
