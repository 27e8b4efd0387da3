"""The whole job config: every section composed, plus the checks that span sections."""

from __future__ import annotations

from pydantic import Field

from .ablation import AblationConfig
from .base import StrictModel
from .data import DataConfig, PackingConfig, TokenizerConfig
from .model import ModelConfig, ParScaleConfig
from .scaling import ScalingConfig
from .stage2 import Stage2Config
from .training import (
    CheckpointConfig,
    EvalConfig,
    LoggingConfig,
    OptimizerConfig,
    ParallelConfig,
    ScheduleConfig,
    TrainConfig,
)


class RunConfig(StrictModel):
    name: str = "parscale"
    output_dir: str = Field("runs/default", description="Checkpoints, metrics and reports go here.")
    seed: int = Field(1234, ge=0)


class JobConfig(StrictModel):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    packing: PackingConfig = Field(default_factory=PackingConfig)
    model: ModelConfig | None = Field(None, description="Required by train, eval, generate and run.")
    parscale: ParScaleConfig = Field(default_factory=ParScaleConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig | None = Field(None, description="Required by train and run.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    stage2: Stage2Config | None = Field(None, description="Required by run: how stage 2 continues this job.")
    scaling: ScalingConfig | None = Field(None, description="Required by scaling: model sizes and stream counts.")
    ablation: AblationConfig | None = Field(None, description="Required by ablate: the stage-2 variants.")


def cross_section_problems(cfg: JobConfig) -> list[tuple[str, str]]:
    """Checks that involve more than one section, as (dotted key, message) pairs."""
    problems: list[tuple[str, str]] = []
    tp = cfg.parallel.tensor_parallel_size
    if cfg.model is not None:
        for key in cfg.model.tp_indivisible(tp):
            problems.append(
                ("parallel.tensor_parallel_size", f"{tp} does not divide model.{key} ({getattr(cfg.model, key)})")
            )
        if cfg.packing.seq_len > cfg.model.max_seq_len:
            problems.append(
                ("packing.seq_len", f"{cfg.packing.seq_len} exceeds model.max_seq_len ({cfg.model.max_seq_len})")
            )
    dp = cfg.parallel.data_parallel_size
    if dp is not None and (problem := cfg.parallel.batch_problem(dp)):
        problems.append(("parallel.global_batch_size", problem))
    if cfg.train is not None and cfg.schedule.warmup_tokens > cfg.train.tokens:
        problems.append(
            ("schedule.warmup_tokens", f"{cfg.schedule.warmup_tokens} exceeds train.tokens ({cfg.train.tokens})")
        )
    return problems


def in_training_tasks_problem(cfg: JobConfig) -> str | None:
    """Why ``eval.tasks`` cannot run inside this training run (None when they can): rank 0 scores
    them on the whole model in its own process, which TP slices and ZeRO-3 partitions do not hold.
    Such a run trains without them (the main job's evaluation and ``parscale eval --tasks`` run
    them on the export), so one config serves every parallel layout."""
    if not cfg.eval.tasks:
        return None
    if cfg.parallel.tensor_parallel_size > 1:
        return f"parallel.tensor_parallel_size is {cfg.parallel.tensor_parallel_size} (ranks hold slices)"
    if cfg.parallel.zero_stage == 3:
        return "parallel.zero_stage is 3 (ranks hold partitions)"
    return None
