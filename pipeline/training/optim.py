"""The optimizer: AdamW over the groups of ``checkpoint.optimizer_groups``, and the frozen-backbone
mode of stage 2 (only prefixes and aggregator train and hold optimizer state)."""

from __future__ import annotations

import torch

from ..checkpoint.optimizer_groups import group_names, is_trainable
from ..config.model import ParScaleConfig
from ..config.training import OptimizerConfig


def apply_trainable(model: torch.nn.Module, parscale: ParScaleConfig) -> int:
    """Freeze the backbone for ``trainable: parscale_only``; returns the trainable parameter count."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable(name, parscale))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: torch.nn.Module, optimizer: OptimizerConfig, parscale: ParScaleConfig) -> list[dict]:
    params = dict(model.named_parameters())
    return [
        {"params": [params[n] for n in names], "weight_decay": decay, "lr_mult": mult}
        for names, decay, mult in group_names(params.items(), optimizer, parscale)
    ]


def build_optimizer(
    model: torch.nn.Module, optimizer: OptimizerConfig, parscale: ParScaleConfig
) -> torch.optim.Optimizer:
    """torch AdamW; its fused CUDA kernel (one launch for all tensors) when the model is on a GPU."""
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(
        param_groups(model, optimizer, parscale),
        lr=optimizer.lr,
        betas=optimizer.betas,
        eps=optimizer.eps,
        fused=fused or None,
    )
