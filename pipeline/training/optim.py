"""The optimizer (AdamW over the parameter groups of ``model.param_groups``) and the
frozen-backbone mode of stage 2 (only prefixes and aggregator train and hold optimizer state)."""

from __future__ import annotations

import torch

from ..config.job import JobConfig
from ..model.param_groups import group_names, is_trainable


def apply_trainable(model: torch.nn.Module, cfg: JobConfig) -> int:
    """Freeze the backbone for ``trainable: parscale_only``; returns the trainable parameter count."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, cfg))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: torch.nn.Module, cfg: JobConfig) -> list[dict]:
    params = dict(model.named_parameters())
    return [
        {"params": [params[n] for n in names], "weight_decay": decay, "lr_mult": mult}
        for names, decay, mult in group_names(params.items(), cfg)
    ]


def build_optimizer(model: torch.nn.Module, cfg: JobConfig) -> torch.optim.Optimizer:
    """torch AdamW; its fused CUDA kernel (one launch for all tensors) when the model is on a GPU."""
    opt = cfg.optimizer
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, cfg), lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=fused or None)
