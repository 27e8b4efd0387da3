"""Config sections for the network: the dense decoder's shape and the ParScale extension."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from .base import StrictModel


class ModelConfig(StrictModel):
    """A Qwen2-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention."""

    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    ffn_hidden_size: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int | None = Field(None, ge=1, description="None = hidden_size / num_attention_heads.")
    vocab_size: int | None = Field(None, ge=1, description="None = the tokenizer's vocabulary size.")
    pad_vocab_to_multiple_of: int = Field(128, ge=1, description="Padded per TP rank, as Megatron does.")
    max_seq_len: int = Field(4096, ge=1)
    rope_base: float = Field(10000.0, gt=0)
    qkv_bias: bool = True
    tie_embeddings: bool = True
    norm_eps: float = Field(1e-6, gt=0)
    init_std: float = Field(0.02, gt=0)
    document_attention: bool = Field(True, description="Reset positions and mask attention per document.")
    attention_backend: Literal["auto", "sdpa", "flex"] = Field(
        "auto",
        description="Attention kernel for packed/prefixed training batches: 'flex' = FlexAttention with a "
        "block mask (CUDA; no CPU backward), 'sdpa' = scaled_dot_product_attention with a dense "
        "mask, 'auto' = flex on CUDA, sdpa elsewhere. Not part of the model's identity.",
    )

    #: fields that choose how the model runs, not what it is: left out of checkpoints and comparisons
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"attention_backend"})

    def identity(self) -> dict:
        """The model's shape as checkpoints record and compare it (runtime choices left out)."""
        return self.model_dump(mode="json", exclude=set(self.RUNTIME_FIELDS))

    #: the sizes tensor parallelism splits: TP must divide each
    TP_SPLIT_FIELDS: ClassVar[tuple[str, ...]] = ("num_attention_heads", "num_kv_heads", "ffn_hidden_size")

    def tp_indivisible(self, tp: int) -> list[str]:
        """The fields ``tp`` ranks cannot split evenly (empty: the model splits ``tp`` ways)."""
        return [key for key in self.TP_SPLIT_FIELDS if getattr(self, key) % tp]

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                f"({self.num_attention_heads}); set head_dim explicitly"
            )
        return self

    @property
    def kv_channels(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


#: The prefix init std for stage 2 (prefixes added to a trained dense model): measured in
#: docs/results/stage2_ablation.md, at 0.02 (ParScaleConfig's default, which from-scratch runs keep)
#: the streams move together and stay alike (single-prefix tuning), at 1.0 they decorrelate and the
#: loss is lower. The default of ``stage2.parscale`` and of ``parscale convert to-parscale``.
STAGE2_PREFIX_INIT_STD = 1.0


class ParScaleConfig(StrictModel):
    """Parallel scaling: P weight-sharing streams with per-layer prefixes and a learned merge."""

    streams: int = Field(1, ge=1, le=64, description="P; 1 is exactly the dense model.")
    prefix_len: int = Field(48, ge=1, description="Prefix tokens per layer and stream.")
    eps: float = Field(0.1, ge=0, lt=1, description="Aggregation smoothing: w*(1-eps) + eps/P.")
    prefix_init: Literal["normal", "mlp"] = Field(
        "normal",
        description="Prefixes as free tensors ('normal') or produced by a small MLP ('mlp' reparameterisation).",
    )
    prefix_init_std: float = Field(0.02, gt=0, description="Std of the prefixes' normal initialisation.")
    prefix_mlp_hidden: int = Field(512, ge=1, description="Hidden width of the 'mlp' reparameterisation.")
    aggregator_init_std: float = Field(
        1e-3, ge=0, description="Init std of the aggregator's last layer (small: near-uniform weights at the start)."
    )
    trainable: Literal["all", "parscale_only"] = Field(
        "all", description="'parscale_only' freezes the backbone: only prefixes and aggregator train."
    )
    single_prefix: bool = Field(
        False,
        description="With streams 1: the dense model plus one learned prefix per "
        "layer (no aggregator), the control that tells prefix tuning "
        "apart from parallel scaling.",
    )

    @model_validator(mode="after")
    def _frozen_needs_streams(self) -> ParScaleConfig:
        if self.single_prefix and self.streams > 1:
            raise ValueError("single_prefix is the one-stream control: it needs streams 1")
        if self.trainable == "parscale_only" and not self.has_prefix:
            raise ValueError("trainable 'parscale_only' with streams 1 leaves nothing to train")
        return self

    @property
    def has_prefix(self) -> bool:
        """Whether the layers have learned prefixes: P > 1, or the one-stream prefix control."""
        return self.streams > 1 or self.single_prefix
