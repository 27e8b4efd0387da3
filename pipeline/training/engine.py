"""The DeepSpeed engine for a job: ZeRO stage, precision, micro/global batch, clipping from the
config; megatron-core's TP x DP groups through the ``mpu`` adapter; a client AdamW (no CUDA/JIT
optimizer build)."""

from __future__ import annotations

import torch

from ..config.job import JobConfig
from ..distributed import MegatronMPU
from .optim import build_optimizer


def deepspeed_config(cfg: JobConfig, dp: int) -> dict:
    par = cfg.parallel
    config = {
        "train_batch_size": par.global_batch_size,
        "train_micro_batch_size_per_gpu": par.micro_batch_size,
        "gradient_accumulation_steps": par.grad_accum_steps(dp),
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": par.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if par.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def build_engine(model: torch.nn.Module, cfg: JobConfig, dp: int):
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=model, optimizer=build_optimizer(model, cfg), config=deepspeed_config(cfg, dp), mpu=MegatronMPU()
    )
    if cfg.parallel.zero_stage == 3 and cfg.model.tie_embeddings:
        # the LM head uses the embedding's weight: ZeRO-3 must gather it around the head too
        deepspeed.zero.register_external_parameter(engine.module.lm_head, engine.module.model.embed_tokens.weight)
    return engine


def set_lr(engine, lr: float) -> None:
    """The schedule's LR on every group, times the group's ``lr_mult`` (ParScale's own parameters)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
