"""Parameter groups for AdamW (weight decay except on configured groups) and the frozen-backbone
mode of stage 2 (only prefixes and aggregator train and hold optimizer state)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config.job import JobConfig


def parscale_parameter(name: str) -> bool:
    return ".prefix." in name or "aggregate_layer" in name


def _group_of(name: str, param: torch.Tensor) -> str | None:
    if ".prefix." in name:
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


def apply_trainable(model: torch.nn.Module, cfg: JobConfig) -> int:
    """Freeze the backbone for ``trainable: parscale_only``; returns the trainable parameter count."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, cfg))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    groups = [(names, cfg.optimizer.weight_decay if decays else 0.0, mult if own else 1.0)
              for (decays, own), names in buckets.items()]
    return [g for g in groups if g[0]]


def param_groups(model: torch.nn.Module, cfg: JobConfig) -> list[dict]:
    params = dict(model.named_parameters())
    return [{"params": [params[n] for n in names], "weight_decay": decay, "lr_mult": mult}
            for names, decay, mult in group_names(params.items(), cfg)]


def build_optimizer(model: torch.nn.Module, cfg: JobConfig) -> torch.optim.Optimizer:
    """torch AdamW; its fused CUDA kernel (one launch for all tensors) when the model is on a GPU."""
    opt = cfg.optimizer
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, cfg), lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=fused or None)
