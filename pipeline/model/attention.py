"""Grouped-query self-attention on megatron-core TP linears (heads split across ranks), RoPE,
optional ParScale prefix keys/values, a KV cache for decoding, and either
``scaled_dot_product_attention`` (a boolean mask, or ``is_causal``) or FlexAttention (a
``BlockMask``, see ``flex.py``)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from megatron.core import ModelParallelConfig, tensor_parallel
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from ..config.model import ModelConfig, ParScaleConfig
from .draws import ParScaleDraws
from .flex import attend
from .prefix import StreamPrefix
from .rope import apply_rotary


class Attention(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        ps: ParScaleConfig,
        mp: ModelParallelConfig,
        init,
        out_init,
        tp_rank: int,
        tp_size: int,
        draws: ParScaleDraws | None = None,
    ):
        """``draws``: the context the prefix is built in (ParScale's own random stream; None: the global one)."""
        super().__init__()
        d = cfg.kv_channels
        self.head_dim = d
        self.heads = cfg.num_attention_heads // tp_size
        self.kv_heads = cfg.num_kv_heads // tp_size
        column = dict(config=mp, init_method=init, bias=cfg.qkv_bias, gather_output=False)
        self.q_proj = tensor_parallel.ColumnParallelLinear(cfg.hidden_size, cfg.num_attention_heads * d, **column)
        self.k_proj = tensor_parallel.ColumnParallelLinear(cfg.hidden_size, cfg.num_kv_heads * d, **column)
        self.v_proj = tensor_parallel.ColumnParallelLinear(cfg.hidden_size, cfg.num_kv_heads * d, **column)
        self.o_proj = tensor_parallel.RowParallelLinear(
            cfg.num_attention_heads * d,
            cfg.hidden_size,
            config=mp,
            init_method=out_init,
            bias=False,
            input_is_parallel=True,
            skip_bias_add=False,
        )
        self.prefix = None
        if ps.has_prefix:
            with draws() if draws is not None else nullcontext():
                self.prefix = StreamPrefix(ps, cfg.num_kv_heads, d, tp_rank, tp_size)

    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)

    def prefix_kv(self, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Prefix keys/values expanded to the stream-major batch (row p*B + b uses stream p)."""
        if self.prefix is None:
            return None
        k, v = self.prefix()
        return k.repeat_interleave(batch, dim=0), v.repeat_interleave(batch, dim=0)

    def forward(self, x, cos, sin, mask, cache=None, layer: int = 0, batch: int = 1):
        """x [P*B, T, h]; mask: bool [P*B, 1, T, keys], a BlockMask (FlexAttention, prefix after the
        tokens) or None (plain causal); ``cache`` a KVCache."""
        q, _ = self.q_proj(x)
        k, _ = self.k_proj(x)
        v, _ = self.v_proj(x)
        q = apply_rotary(self._split(q, self.heads), cos, sin)
        k = apply_rotary(self._split(k, self.kv_heads), cos, sin)
        v = self._split(v, self.kv_heads)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # prefix (if any) already at the front of the cache
        elif self.prefix is not None:
            pk, pv = (t.to(k.dtype) for t in self.prefix_kv(batch))
            if isinstance(mask, BlockMask):
                k, v = torch.cat([k, pk], dim=2), torch.cat([v, pv], dim=2)
            else:
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        if isinstance(mask, BlockMask):
            out = attend(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        out, _ = self.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        return out
