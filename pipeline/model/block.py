"""One pre-norm decoder layer: RMSNorm -> attention -> residual, RMSNorm -> SwiGLU -> residual."""

from __future__ import annotations

from torch import nn

from .attention import Attention
from .mlp import SwiGLU
from .norm import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, cfg, ps, mp, init, out_init, tp_rank: int, tp_size: int, draws=None):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.self_attn = Attention(cfg, ps, mp, init, out_init, tp_rank, tp_size, draws)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.ffn_hidden_size, mp, init, out_init)

    def forward(self, x, cos, sin, mask, cache=None, layer: int = 0, batch: int = 1):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, batch)
        return x + self.mlp(self.post_attention_layernorm(x))
