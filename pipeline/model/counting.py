"""Parameter and FLOP counts of dense and ParScale models, from the config alone (no model built).

Conventions (as in the ParScale paper's tables): *non-embedding* parameters are every parameter
except the input embedding and the LM head, final norm included. FLOPs count multiply-adds as 2;
a training step is 3x the forward (backward = 2x forward); activation recomputation is not
counted (MFU convention)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config.model import ModelConfig, ParScaleConfig


@dataclass(frozen=True)
class ParamCounts:
    embedding: int  # input embedding
    lm_head: int  # 0 when tied
    non_embedding: int  # the dense backbone: layers + final norm
    parscale: int  # prefixes + aggregator (0 at P=1)

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.non_embedding + self.parscale

    @property
    def parscale_fraction(self) -> float:
        """ParScale's extra parameters relative to the dense non-embedding ones."""
        return self.parscale / self.non_embedding

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "parscale_fraction": self.parscale_fraction}


def _layer_linears(cfg: ModelConfig) -> int:
    h, d = cfg.hidden_size, cfg.kv_channels
    q, kv = cfg.num_attention_heads * d, cfg.num_kv_heads * d
    return h * q + 2 * h * kv + q * h + 3 * h * cfg.ffn_hidden_size  # q, k, v, o, gate, up, down


def prefix_params(cfg: ModelConfig, ps: ParScaleConfig) -> int:
    if not ps.has_prefix:
        return 0
    kv_width = cfg.num_kv_heads * cfg.kv_channels
    if ps.prefix_init == "normal":
        per_layer = 2 * ps.streams * ps.prefix_len * kv_width
    else:
        r = ps.prefix_mlp_hidden
        per_layer = ps.streams * ps.prefix_len * r + (r * r + r) + (r * 2 * kv_width + 2 * kv_width)
    return cfg.num_layers * per_layer


def aggregator_params(cfg: ModelConfig, ps: ParScaleConfig) -> int:
    if ps.streams == 1:
        return 0
    h, p = cfg.hidden_size, ps.streams
    return (p * h * h + h) + (h * p + p)


def parameter_counts(cfg: ModelConfig, ps: ParScaleConfig, vocab: int) -> ParamCounts:
    """Counts for a vocabulary of ``vocab`` rows (pass the padded size to match a built model)."""
    h, d = cfg.hidden_size, cfg.kv_channels
    bias = (cfg.num_attention_heads + 2 * cfg.num_kv_heads) * d if cfg.qkv_bias else 0
    per_layer = _layer_linears(cfg) + bias + 2 * h  # + two RMSNorms
    return ParamCounts(
        embedding=vocab * h,
        lm_head=0 if cfg.tie_embeddings else vocab * h,
        non_embedding=cfg.num_layers * per_layer + h,
        parscale=prefix_params(cfg, ps) + aggregator_params(cfg, ps),
    )


def forward_flops_per_token(cfg: ModelConfig, ps: ParScaleConfig, vocab: int, seq_len: int) -> float:
    """Forward FLOPs per input token at context ``seq_len`` (causal: a token attends to (T+1)/2
    tokens on average, plus the prefix). ParScale runs the backbone P times and the LM head once."""
    streams = ps.streams
    width = cfg.num_attention_heads * cfg.kv_channels
    context = (seq_len + 1) / 2 + (ps.prefix_len if ps.has_prefix else 0)
    attention = 2 * 2 * width * context  # QK^T and AV
    backbone = cfg.num_layers * (2 * _layer_linears(cfg) + attention)
    aggregator = 2 * aggregator_params(cfg, ps)
    head = 2 * cfg.hidden_size * vocab
    return streams * backbone + aggregator + head


def train_flops_per_token(cfg: ModelConfig, ps: ParScaleConfig, vocab: int, seq_len: int) -> float:
    return 3 * forward_flops_per_token(cfg, ps, vocab, seq_len)
