"""The optimizer's parameter groups, by name: which parameters train (``parscale.trainable``) and
how they are grouped (weight decay by kind, ParScale's own LR multiplier). The trainer builds its
AdamW from them and a checkpoint reader maps a ZeRO-0 optimizer's per-group tensors back to names
with them: one rule, so that a checkpoint always reads back as it was written."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config.model import ParScaleConfig
from ..config.training import OptimizerConfig
from ..model.param_groups import parameter_kind, parscale_parameter


def is_trainable(name: str, parscale: ParScaleConfig) -> bool:
    return parscale_parameter(name) or parscale.trainable != "parscale_only"


def group_names(
    named: Iterable[tuple[str, torch.Tensor]], optimizer: OptimizerConfig, parscale: ParScaleConfig
) -> list[tuple[list[str], float, float]]:
    """The optimizer's parameter groups as (names, weight decay, LR multiplier), in the optimizer's
    order. ParScale's parameters get groups of their own only when ``optimizer.parscale_lr_mult``
    != 1, so the grouping (and older checkpoints' layout) is unchanged otherwise."""
    no_decay = set(optimizer.no_decay)
    mult = optimizer.parscale_lr_mult
    split = mult != 1.0
    buckets: dict[tuple[bool, bool], list[str]] = {(d, p): [] for p in (False, True) for d in (True, False)}
    for name, param in named:
        if is_trainable(name, parscale):
            decays = parameter_kind(name, param) not in no_decay
            buckets[(decays, split and parscale_parameter(name))].append(name)
    groups = [
        (names, optimizer.weight_decay if decays else 0.0, mult if own else 1.0)
        for (decays, own), names in buckets.items()
    ]
    return [g for g in groups if g[0]]
