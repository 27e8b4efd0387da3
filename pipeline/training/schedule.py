"""Warmup-stable-decay learning rate. Stage 1: warmup then constant (``decay_fraction`` 0, or a
short decay at the end). Stage 2's anneal: warmup then decay over the rest (``decay_fraction`` 1)
to ``min_lr_ratio * lr``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.training import ScheduleConfig


@dataclass(frozen=True)
class WSD:
    lr: float
    total_steps: int
    warmup_steps: int
    decay_steps: int
    style: str
    min_lr: float

    @classmethod
    def build(cls, cfg: ScheduleConfig, lr: float, total_steps: int, tokens_per_step: int) -> WSD:
        warmup = min(total_steps, math.ceil(cfg.warmup_tokens / tokens_per_step))
        decay = min(total_steps - warmup, round(cfg.decay_fraction * total_steps))
        return cls(lr, total_steps, warmup, decay, cfg.decay_style, lr * cfg.min_lr_ratio)

    def __call__(self, step: int) -> float:
        """LR for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if self.decay_steps == 0 or step < decay_start:
            return self.lr
        progress = min(1.0, (step - decay_start + 1) / self.decay_steps)
        if self.style == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.lr - self.min_lr) * factor
