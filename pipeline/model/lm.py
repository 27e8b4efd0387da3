"""The language model: a Qwen2-style decoder on megatron-core TP layers, with ParScale.

Parameter names follow Hugging Face Qwen2 (``model.embed_tokens``, ``model.layers.N.self_attn.q_proj``,
``model.norm``, ``lm_head``), so at TP=1 a dense state dict loads as is; ParScale's parameters are
``model.layers.N.self_attn.prefix.prefix_{k,v}`` (official: ``...self_attn.prefix_{k,v}``) and
``model.aggregate_layer.{0,2}`` (as official).

With P > 1 streams the batch is replicated stream-major (row p*B + b is stream p of sequence b);
the streams share every weight and differ only by their prefixes; after the final norm the
aggregator merges them and the LM head runs once. P = 1 is exactly the dense model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from megatron.core import ModelParallelConfig, tensor_parallel
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config.model import ModelConfig, ParScaleConfig
from .aggregator import aggregate, build_aggregate_layer
from .block import DecoderLayer
from .draws import Draws, ParScaleDraws
from .flex import document_block_mask, use_flex
from .masks import attention_mask, positions_from_segments
from .norm import RMSNorm
from .rope import Rotary
from .tp_ops import gather_last_dim


def padded_vocab_size(vocab: int, multiple: int, tp: int) -> int:
    """Round up so every TP rank holds an equal slice that is a multiple of ``multiple``."""
    step = multiple * tp
    return -(-vocab // step) * step


@dataclass
class LMOutput:
    logits: torch.Tensor | None  # [B, T, padded vocab / TP]: this rank's vocabulary slice (None with labels:
    # megatron's vocab-parallel cross entropy works in place on them)
    loss: torch.Tensor | None = None  # mean over unmasked tokens
    stream_weights: torch.Tensor | None = None  # [B, T, P] aggregation weights (ParScale only)
    stream_states: torch.Tensor | None = None  # [P, B, T, H] final-norm states before the merge (on request)


def _normal(std: float):
    def init(weight: torch.Tensor) -> torch.Tensor:
        return nn.init.normal_(weight, mean=0.0, std=std)

    return init


class Backbone(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        ps: ParScaleConfig,
        mp: ModelParallelConfig,
        vocab: int,
        tp_rank: int,
        tp_size: int,
        draws: ParScaleDraws,
    ):
        super().__init__()
        init = _normal(cfg.init_std)
        out_init = _normal(cfg.init_std / math.sqrt(2 * cfg.num_layers))  # scaled residual init (Megatron)
        self.embed_tokens = tensor_parallel.VocabParallelEmbedding(vocab, cfg.hidden_size, init_method=init, config=mp)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, ps, mp, init, out_init, tp_rank, tp_size, draws) for _ in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.aggregate_layer = None
        if ps.streams > 1:
            with draws():
                self.aggregate_layer = build_aggregate_layer(
                    cfg.hidden_size, ps.streams, cfg.init_std, ps.aggregator_init_std
                )


class ParScaleLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        ps: ParScaleConfig,
        vocab_size: int,
        *,
        tp_rank: int = 0,
        tp_size: int = 1,
        activation_checkpointing: bool = False,
        params_dtype: torch.dtype = torch.float32,
        parscale_draws: Draws = "own",
    ):
        """``parscale_draws``: where the prefixes and the aggregator draw their initial values (see
        ``draws.py``): ``own`` keeps the backbone's initialisation that of the dense model of the
        same seed."""
        super().__init__()
        self.config, self.parscale = cfg, ps
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size(vocab_size, cfg.pad_vocab_to_multiple_of, tp_size)
        self.streams = ps.streams
        self.prefix_len = ps.prefix_len if ps.has_prefix else 0
        self.activation_checkpointing = activation_checkpointing
        self.attention_backend = cfg.attention_backend  # "auto" | "sdpa" | "flex" (a runtime choice)
        mp = ModelParallelConfig(
            tensor_model_parallel_size=tp_size,
            use_cpu_initialization=True,
            params_dtype=params_dtype,
            perform_initialization=True,
        )
        self.model = Backbone(cfg, ps, mp, self.padded_vocab_size, tp_rank, tp_size, ParScaleDraws(parscale_draws))
        self.lm_head = tensor_parallel.ColumnParallelLinear(
            cfg.hidden_size,
            self.padded_vocab_size,
            config=mp,
            init_method=_normal(cfg.init_std),
            bias=False,
            gather_output=False,
            skip_weight_param_allocation=cfg.tie_embeddings,
        )
        self.rotary = Rotary(cfg.kv_channels, cfg.rope_base)
        self.lm_head_rank = tp_rank

    def _positions_and_mask(self, input_ids, segment_ids, position_ids, cache, key_valid):
        b, t = input_ids.shape
        device = input_ids.device
        past = cache.length if cache is not None else 0
        if position_ids is None:
            if segment_ids is not None:
                position_ids = positions_from_segments(segment_ids)
            else:
                position_ids = (past + torch.arange(t, device=device)).expand(b, t)
        if cache is None and segment_ids is None and key_valid is None and not self.prefix_len:
            return position_ids, None  # plain causal: SDPA's fused path
        if cache is None and key_valid is None and use_flex(self.attention_backend, device):
            # one block mask for the batch, every layer and every stream
            return position_ids, document_block_mask(segment_ids, b, t, self.prefix_len, self.streams, device)
        query = (past + torch.arange(t, device=device)).expand(b, t)
        keys = torch.arange(past + t, device=device).expand(b, past + t)
        mask = attention_mask(
            query,
            keys,
            query_segments=segment_ids,
            key_segments=segment_ids,
            key_valid=key_valid,
            prefix_len=self.prefix_len,
        )
        return position_ids, mask

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        key_valid: torch.Tensor | None = None,
        return_stream_states: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> LMOutput:
        """``input_ids`` [B, T]; ``labels`` [B, T] already shifted; ``segment_ids`` [B, T] document ids
        in a packed row; ``cache``/``key_valid`` [B, cached + T] for incremental decoding;
        ``return_stream_states``: also return each stream's final states (diagnostics);
        ``logits_at`` [B, T] bool: logits only where True, as [N, vocab / TP] rows in row-major order
        (scoring and decoding need a few positions; the output layer is a large part of a pass)."""
        b, t = input_ids.shape
        positions, mask = self._positions_and_mask(input_ids, segment_ids, position_ids, cache, key_valid)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        p = self.streams
        if p > 1:
            x, cos, sin = x.repeat(p, 1, 1), cos.repeat(p, 1, 1), sin.repeat(p, 1, 1)
            if isinstance(mask, torch.Tensor):  # the dense SDPA mask (CPU path); a BlockMask covers the streams
                mask = mask.repeat(p, 1, 1, 1)
        for i, layer in enumerate(self.model.layers):
            if self.activation_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, cos, sin, mask, None, i, b, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i, b)
        if cache is not None:
            cache.advance(t)
        x = self.model.norm(x)
        weights = None
        states = x.view(p, b, *x.shape[1:]).detach() if return_stream_states else None
        if p > 1:
            x, weights = aggregate(self.model.aggregate_layer, x, p, self.parscale.eps)
        if logits_at is not None:
            if labels is not None:
                raise ValueError("logits_at and labels exclude each other")
            x = x[logits_at]
        weight = self.model.embed_tokens.weight if self.config.tie_embeddings else None
        logits, _ = self.lm_head(x, weight=weight)
        logits = self._mask_vocab_padding(logits)
        loss = None
        if labels is not None:
            per_token = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)
            logits = None
            if loss_mask is None:
                loss = per_token.mean()
            else:
                loss_mask = loss_mask.to(per_token.dtype)
                loss = (per_token * loss_mask).sum() / loss_mask.sum().clamp(min=1)
        return LMOutput(logits, loss, weights, states)

    def _mask_vocab_padding(self, logits: torch.Tensor) -> torch.Tensor:
        """Padding rows of the vocabulary never get probability: their weights are then irrelevant,
        so checkpoints can drop them and any TP can pad afresh."""
        if self.padded_vocab_size == self.vocab_size:
            return logits
        local = logits.shape[-1]
        first = self.lm_head_rank * local
        if first + local <= self.vocab_size:
            return logits
        ids = first + torch.arange(local, device=logits.device)
        return logits.masked_fill(ids >= self.vocab_size, float("-inf"))

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Gather the vocabulary slices of every TP rank and drop the padding: [B, T, vocab]."""
        return gather_last_dim(logits)[..., : self.vocab_size]
