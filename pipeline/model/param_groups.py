"""What each parameter of ``ParScaleLM`` is, by name: ParScale's own (the per-layer prefixes and the
aggregator) or the backbone's, and its optimizer group (weight decay, LR multiplier). The trainer's
optimizer, the checkpoint readers (ZeRO-0 groups back to names) and the converters use these."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config.job import JobConfig

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")  # one row per vocabulary entry (padded in training)


def is_prefix(name: str) -> bool:
    return ".prefix." in name


def parscale_parameter(name: str) -> bool:
    """ParScale's own: the streams' prefixes and the aggregator (absent from a dense model)."""
    return is_prefix(name) or "aggregate_layer" in name


def _group_of(name: str, param: torch.Tensor) -> str | None:
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


def is_trainable(name: str, cfg: JobConfig) -> bool:
    return parscale_parameter(name) or cfg.parscale.trainable != "parscale_only"


def group_names(named: Iterable[tuple[str, torch.Tensor]], cfg: JobConfig) -> list[tuple[list[str], float, float]]:
    """The optimizer's parameter groups as (names, weight decay, LR multiplier), in the optimizer's
    order; also how checkpoint readers map a ZeRO-0 optimizer's per-group tensors back to names.
    ParScale's parameters get groups of their own only when ``optimizer.parscale_lr_mult`` != 1, so
    the grouping (and older checkpoints' layout) is unchanged otherwise."""
    no_decay = set(cfg.optimizer.no_decay)
    mult = cfg.optimizer.parscale_lr_mult
    split = mult != 1.0
    buckets: dict[tuple[bool, bool], list[str]] = {(d, p): [] for p in (False, True) for d in (True, False)}
    for name, param in named:
        if is_trainable(name, cfg):
            decays = _group_of(name, param) not in no_decay
            buckets[(decays, split and parscale_parameter(name))].append(name)
    groups = [
        (names, cfg.optimizer.weight_decay if decays else 0.0, mult if own else 1.0)
        for (decays, own), names in buckets.items()
    ]
    return [g for g in groups if g[0]]
