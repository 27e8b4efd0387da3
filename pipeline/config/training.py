"""Config sections for a training job: parallelism, optimizer, LR schedule, budget, checkpoints,
evaluation and logging."""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from .base import Count, Scaled, StrictModel


class ParallelConfig(StrictModel):
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int | None = Field(
        None, ge=1, description="None = world size / tensor_parallel_size. The local launcher uses it."
    )
    zero_stage: int = Field(1, ge=0, le=3)
    micro_batch_size: int = Field(1, ge=1, description="Sequences per rank per forward pass.")
    global_batch_size: int = Field(8, ge=1, description="Sequences per optimizer step, all ranks.")
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_accum_dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16 only: the dtype gradients are accumulated over micro-batches and reduced over "
        "data-parallel ranks in. fp32 (ZeRO >= 1: DeepSpeed's fp32 gradient buffers and fp32 all-reduce) "
        "keeps long accumulations exact; bf16 halves that memory and traffic and rounds every sum to 8 bits "
        "of mantissa. fp32 runs ignore it.",
    )
    tf32: bool = Field(
        True,
        description="On CUDA, fp32 matrix multiplies and convolutions run on TF32 tensor cores (10-bit "
        "mantissa inputs, fp32 accumulation; ~8x the fp32 rate). Off: full fp32. CPU runs ignore it.",
    )
    activation_checkpointing: bool = False
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: NCCL on CUDA, else gloo.")

    @model_validator(mode="after")
    def _batch(self) -> ParallelConfig:
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) is not a multiple of "
                f"micro_batch_size ({self.micro_batch_size})"
            )
        if self.precision == "bf16" and self.grad_accum_dtype == "fp32" and self.zero_stage == 0:
            raise ValueError(
                "grad_accum_dtype: fp32 with precision: bf16 needs zero_stage >= 1 (DeepSpeed's ZeRO 0 "
                "accumulates bf16 gradients in bf16 only); set parallel.zero_stage: 1 or more, or "
                "parallel.grad_accum_dtype: bf16"
            )
        return self

    def batch_problem(self, dp: int) -> str | None:
        """Why global_batch_size cannot be split over ``dp`` data-parallel ranks, or None."""
        if self.global_batch_size % (self.micro_batch_size * dp):
            return (
                f"{self.global_batch_size} is not a multiple of micro_batch_size x data-parallel size "
                f"({self.micro_batch_size} x {dp})"
            )
        return None

    def grad_accum_steps(self, dp: int) -> int:
        """Micro-batches per rank per optimizer step."""
        problem = self.batch_problem(dp)
        if problem:
            raise ValueError(problem)
        return self.global_batch_size // (self.micro_batch_size * dp)


NoDecayGroup = Literal["norm", "bias", "embedding", "prefix", "aggregator"]


class OptimizerConfig(StrictModel):
    type: Literal["adamw"] = "adamw"
    lr: Scaled = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: Scaled = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    no_decay: list[NoDecayGroup] = Field(
        default_factory=lambda: ["norm", "bias"], description="Parameter groups exempt from weight decay."
    )
    grad_clip: float = Field(1.0, ge=0, description="Global grad-norm clip; 0 disables.")
    parscale_lr_mult: float = Field(
        1.0, gt=0, description="LR multiplier for ParScale's own parameters (prefixes and aggregator)."
    )


class ScheduleConfig(StrictModel):
    """Warmup-stable-decay. Stage 1: decay_fraction 0 (warmup then constant). Stage 2's anneal:
    decay_fraction 1 (warmup then decay to the floor)."""

    warmup_tokens: Count = Field(0, ge=0)
    decay_fraction: float = Field(0.0, ge=0, le=1, description="Share of the budget spent decaying, at the end.")
    decay_style: Literal["cosine", "linear"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Floor of the decay, as a fraction of lr.")


class BlendEntry(StrictModel):
    path: str = Field(description="A data_prep output directory (holds manifest.json).")
    weight: float = Field(1.0, gt=0)


#: ``train.verify_data: auto`` hashes every shard of a dataset up to this size (bytes of .bin and .idx)
VERIFY_SHA256_UP_TO = 2 * 1024**3


class TrainConfig(StrictModel):
    tokens: Count = Field(gt=0, description="Training budget in tokens; steps are derived from it.")
    datasets: list[BlendEntry] = Field(
        default_factory=list, description="Prepared datasets and weights; empty = data.output_dir."
    )
    init_from: str | None = Field(
        None,
        description="A portable checkpoint folder to start from (every run exports one to "
        "<output_dir>/portable/; parscale convert consolidate makes one from trainer checkpoints, "
        "import-hf from a Hugging Face folder).",
    )
    skip_tokens: Count | None = Field(
        None,
        ge=0,
        description="Start this far into the data order (whole sequences). None: the tokens_seen that "
        "train.init_from's config.json records (stage 2 reads on after the tokens stage 1 trained on), "
        "0 without init_from; a number given wins.",
    )
    grow_vocab: bool = Field(
        False,
        description="Let train.init_from's vocabulary grow to the model's (the data's tokenizer appends tokens to "
        "the checkpoint's): the new embedding and output rows start at the mean of the trained ones. Without it a "
        "different tokenizer or vocabulary size is refused; shrinking always is.",
    )
    max_nonfinite_in_a_row: int = Field(5, ge=1, description="Skipped steps in a row before stopping.")
    verify_data: Literal["auto", "size", "sha256"] = Field(
        "auto",
        description="Before reading the prepared data: 'size' checks every shard's size against its manifest "
        "(and the tokenizer's sha256), 'sha256' also every shard's sha256 (reads all the data once: catches "
        "same-size damage), 'auto' = sha256 for datasets of up to VERIFY_SHA256_UP_TO bytes of shards (2 GiB, "
        "a few seconds of reading), size above.",
    )

    def steps(self, tokens_per_step: int) -> int:
        """Optimizer steps that cover ``tokens``: whole steps, at least one."""
        return max(1, math.ceil(self.tokens / tokens_per_step))


class CheckpointConfig(StrictModel):
    dir: str | None = Field(None, description="None = <run.output_dir>/checkpoints.")
    interval_steps: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    resume: bool = Field(True, description="Resume from the latest checkpoint in dir, if any.")
    verify_on_resume: Literal["sha256", "size"] = Field(
        "sha256",
        description="Before resuming, check every file of the checkpoint against the sizes and sha256 "
        "recorded at save (hashing split over the ranks), or sizes only; a damaged checkpoint "
        "is set aside and the newest intact one is used.",
    )
    stop_file: str | None = Field(
        None,
        description="A file whose appearance makes training save a checkpoint and stop at the next step "
        "(removed once acted on). The SLURM launcher sets it for its pre-timeout signal.",
    )
    exit_at_step: int | None = Field(
        None,
        ge=1,
        description="Save a checkpoint and exit at this step (Megatron-LM's --exit-interval), for allocations "
        "shorter than the run; a rerun resumes from it and goes on to the end. Not part of the run's identity.",
    )


class EvalConfig(StrictModel):
    interval_steps: int = Field(1000, ge=0, description="0 = only at the end.")
    max_batches: int = Field(
        50,
        ge=1,
        description="Validation micro-batches per evaluation, in total over the DP "
        "ranks: the same rows parscale eval and the final report read.",
    )
    stream_diagnostics: bool = Field(
        True,
        description="P > 1: also evaluate with every stream given the streams' "
        "mean prefix (the diversity gain; doubles evaluation time).",
    )
    tasks: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="lm-evaluation-harness task or group names run on the model being trained (rank 0 scores "
        "the live model; the other ranks wait), e.g. parscale_smoke, the project's offline smoke tasks; "
        "empty = none. Needs the whole model in one process: not with parallel.tensor_parallel_size > 1 or "
        "parallel.zero_stage 3 (run parscale eval --tasks on the portable export instead).",
    )
    tasks_interval_steps: int | None = Field(
        None,
        ge=0,
        description="Steps between runs of eval.tasks: None = with the validation loss (every "
        "eval.interval_steps steps), 0 = only at the end; always at the end of a run that spent its budget.",
    )
    tasks_limit: int | None = Field(None, ge=1, description="Documents per task; None = all.")
    tasks_num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt; None = each task's.")
    tasks_include_path: list[str] = Field(
        default_factory=list, description="Folders of more task YAMLs (lm-eval's include_path)."
    )
    tasks_batch_size: int = Field(8, ge=1, description="eval.tasks: requests per forward pass.")

    @property
    def tasks_every(self) -> int:
        """Steps between in-training runs of ``tasks`` (0: only at the end)."""
        return self.interval_steps if self.tasks_interval_steps is None else self.tasks_interval_steps


def _inside_the_run(path: str) -> str:
    """A relative output path may not climb out of the run folder (``../x``); an absolute one is the user's."""
    if not PurePath(path).is_absolute() and ".." in PurePath(path).parts:
        raise ValueError(f"{path!r} climbs out of run.output_dir; give a path inside it, or an absolute one")
    return path


class LoggingConfig(StrictModel):
    interval_steps: int = Field(10, ge=1)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "parscale"
    metrics_file: Annotated[str, AfterValidator(_inside_the_run)] = Field(
        "metrics.jsonl", description="Relative to run.output_dir (and inside it), or an absolute path."
    )
    peak_flops: Scaled | None = Field(None, gt=0, description="Per-device peak FLOP/s for MFU, e.g. 989T.")
