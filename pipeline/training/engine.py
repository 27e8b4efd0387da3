"""The DeepSpeed engine for a job: ZeRO stage, precision, micro/global batch, clipping from the
config; megatron-core's TP x DP groups through the ``mpu`` adapter; a client AdamW (no CUDA/JIT
optimizer build)."""

from __future__ import annotations

from ..config.model import ParScaleConfig
from ..config.training import OptimizerConfig, ParallelConfig
from ..distributed import MegatronMPU
from ..model import ParScaleLM
from .optim import build_optimizer


def deepspeed_config(parallel: ParallelConfig, optimizer: OptimizerConfig, dp: int) -> dict:
    config = {
        "train_batch_size": parallel.global_batch_size,
        "train_micro_batch_size_per_gpu": parallel.micro_batch_size,
        "gradient_accumulation_steps": parallel.grad_accum_steps(dp),
        "gradient_clipping": optimizer.grad_clip,
        "zero_optimization": {"stage": parallel.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if parallel.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def build_engine(
    model: ParScaleLM, parallel: ParallelConfig, optimizer: OptimizerConfig, parscale: ParScaleConfig, dp: int
):
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, optimizer, parscale),
        config=deepspeed_config(parallel, optimizer, dp),
        mpu=MegatronMPU(),
    )
    if parallel.zero_stage == 3 and model.config.tie_embeddings:
        # the LM head uses the embedding's weight: ZeRO-3 must gather it around the head too
        deepspeed.zero.register_external_parameter(engine.module.lm_head, engine.module.model.embed_tokens.weight)
    return engine


def set_lr(engine, lr: float) -> None:
    """The schedule's LR on every group, times the group's ``lr_mult`` (ParScale's own parameters)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
