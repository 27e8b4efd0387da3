"""Parameter groups for AdamW (weight decay except on configured groups) and the frozen-backbone
mode of stage 2 (only prefixes and aggregator train and hold optimizer state)."""

from __future__ import annotations

import torch

from ..config.job import JobConfig


def parscale_parameter(name: str) -> bool:
    return ".prefix." in name or "aggregate_layer" in name


def _group_of(name: str, param: torch.nn.Parameter) -> str | None:
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


def apply_trainable(model: torch.nn.Module, cfg: JobConfig) -> int:
    """Freeze the backbone for ``trainable: parscale_only``; returns the trainable parameter count."""
    frozen = cfg.parscale.trainable == "parscale_only"
    for name, param in model.named_parameters():
        param.requires_grad_(parscale_parameter(name) or not frozen)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: torch.nn.Module, cfg: JobConfig) -> list[dict]:
    no_decay = set(cfg.optimizer.no_decay)
    decay, plain = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if _group_of(name, param) in no_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.optimizer.weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, cfg: JobConfig) -> torch.optim.Optimizer:
    opt = cfg.optimizer
    return torch.optim.AdamW(param_groups(model, cfg), lr=opt.lr, betas=opt.betas, eps=opt.eps)
