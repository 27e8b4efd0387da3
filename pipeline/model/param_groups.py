"""What each parameter of ``ParScaleLM`` is, by name: ParScale's own (the per-layer prefixes and the
aggregator) or the backbone's, its kind (the names ``optimizer.no_decay`` lists), and which rows
are the vocabulary's. The optimizer's groups, the checkpoint readers and the converters use these."""

from __future__ import annotations

import torch

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")  # one row per vocabulary entry (padded in training)


def is_prefix(name: str) -> bool:
    return ".prefix." in name


def parscale_parameter(name: str) -> bool:
    """ParScale's own: the streams' prefixes and the aggregator (absent from a dense model)."""
    return is_prefix(name) or "aggregate_layer" in name


def parameter_kind(name: str, param: torch.Tensor) -> str | None:
    """prefix, aggregator, bias, embedding or norm; None for the backbone's weight matrices."""
    if is_prefix(name):
        return "prefix"
    if "aggregate_layer" in name:
        return "aggregator" if param.dim() > 1 else "bias"
    if "embed_tokens" in name:
        return "embedding"
    if name.endswith("norm.weight"):
        return "norm"
    if name.endswith(".bias"):
        return "bias"
    return None
