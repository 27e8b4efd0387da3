"""The DeepSpeed engine for a job: ZeRO stage, precision, micro/global batch, clipping from the
config; megatron-core's TP x DP groups through the ``mpu`` adapter; a client AdamW (no CUDA/JIT
optimizer build)."""

from __future__ import annotations

import torch

from ..config.model import ParScaleConfig
from ..config.training import OptimizerConfig, ParallelConfig
from ..distributed import MegatronMPU
from ..model import ParScaleLM
from .optim import build_optimizer


def deepspeed_config(parallel: ParallelConfig, optimizer: OptimizerConfig, dp: int) -> dict:
    """DeepSpeed's config dict for the job (fp32 runs: no precision keys at all)."""
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
        config |= bf16_gradient_dtypes(parallel.grad_accum_dtype)
    return config


def bf16_gradient_dtypes(grad_accum_dtype: str) -> dict:
    """The keys that make a bf16 run accumulate and reduce its gradients in ``grad_accum_dtype``
    (``parallel.grad_accum_dtype``). Without them DeepSpeed 0.19 sums the micro-batches' gradients
    in bf16 and all-reduces them in bf16 (``communication_data_type`` defaults to the model's dtype).
    With fp32: ZeRO 1 switches to DeepSpeed's ``BF16_Optimizer`` (fp32 gradient buffer per
    parameter group, fp32 master partitions), ZeRO 2 and 3 keep an fp32 gradient partition; each
    micro-batch's bf16 gradient is added into it in fp32 and every reduction runs in fp32 (at ZeRO
    2/3 each micro-batch's gradient is reduced, at ZeRO 1 the accumulated one at the boundary).
    ZeRO 0 cannot (refused by the config)."""
    if grad_accum_dtype == "bf16":
        return {"bf16": {"enabled": True}}  # DeepSpeed's default: as before the key existed
    return {
        # BF16_Optimizer's default moves each micro-batch's bf16 gradients into its fp32 buffer in a
        # backward prologue that DeepSpeed runs from hooks on the forward's output tensors; our model
        # returns an ``LMOutput`` dataclass, which it does not search, so that prologue never runs and
        # every micro-batch would add the running bf16 sum again (measured: grad norm 2.7x at 4
        # micro-batches). ``immediate_grad_update`` moves each gradient as soon as it is complete.
        "bf16": {"enabled": True, "immediate_grad_update": True},
        "data_types": {"grad_accum_dtype": grad_accum_dtype},
        "communication_data_type": grad_accum_dtype,
    }


def set_tf32(enabled: bool, device: torch.device) -> bool:
    """``parallel.tf32`` on a CUDA device: fp32 matrix multiplies (cuBLAS) and convolutions (cuDNN)
    on TF32 tensor cores, or not. Nothing is touched on the host (CPU matmuls have no TF32, and
    fp32 CPU training stays bit-identical); returns whether it was applied."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return True


def build_engine(
    model: ParScaleLM, parallel: ParallelConfig, optimizer: OptimizerConfig, parscale: ParScaleConfig, dp: int
):
    """The engine of ``model``, handed over on the host: DeepSpeed casts a bf16 run's parameters
    there and only then moves the model to its device, so a bf16 run's device never holds its fp32
    weights.

    ZeRO 3 is not built under ``deepspeed.zero.Init``: the whole model (bf16: half the fp32 bytes)
    reaches each GPU once before ZeRO 3 partitions it. At the paper presets that is 2.2-2.5 GiB fp32
    / 1.1-1.3 GiB bf16 for 0.5B (0.60-0.68B parameters with a 64k-152k vocabulary) and 6.2-6.8 GiB
    / 3.1-3.4 GiB for 1.6B (1.67-1.83B), a few percent of an 80 GB GPU, freed before the first
    step. zero.Init would partition each layer at construction, which breaks what follows it:
    megatron-core's TP layers are initialised on the CPU from one seed (the same weights at every
    TP and ZeRO stage, tested), and ``train.init_from``, a resharded resume and ``grow_vocab``
    copy full tensors into the parameters before the engine exists."""
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


def fp32_masters(engine) -> dict[str, torch.Tensor]:
    """A bf16 run's fp32 master weights, by parameter name: this TP rank's slice, whole over the
    data-parallel ranks (a collective over them: call on every rank, in the same order). ZeRO 1-3
    gather the optimizer's fp32 partitions (DeepSpeed's ``safe_get_full_fp32_param``); ZeRO 0
    keeps a whole fp32 copy of each parameter. A parameter the optimizer does not hold (frozen by
    ``parscale.trainable``) has none and is left out: its module weight is all there is."""
    from deepspeed.utils import safe_get_full_fp32_param

    copies = None
    masters = {}
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        master = safe_get_full_fp32_param(param)
        if master is None:  # not partitioned by ZeRO: ZeRO 0's own fp32 copy
            copies = _whole_fp32_copies(engine.optimizer) if copies is None else copies
            master = copies.get(id(param))
        if master is not None:
            masters[name] = master.detach().float()
    return masters


def _whole_fp32_copies(optimizer) -> dict[int, torch.Tensor]:
    """ZeRO 0's bf16 optimizer (DeepSpeed's FP16_UnfusedOptimizer): ``id(parameter)`` -> its fp32
    copy, group by group in the same order as the groups' bf16 parameters."""
    lows, highs = getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", [])
    return {
        id(low): high
        for low_group, high_group in zip(lows, highs, strict=True)
        for low, high in zip(low_group, high_group, strict=True)
    }


def set_lr(engine, lr: float) -> None:
    """The schedule's LR on every group, times the group's ``lr_mult`` (ParScale's own parameters)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
