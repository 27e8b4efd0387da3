"""``parscale run``'s stage 2, described inside the (stage-1) job config: the job's own sections
train the dense model; ``stage2`` says how the ParScale model continues from it, and whether a
dense control continues alongside for the comparison at equal stage-2 tokens."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .base import Count, Scaled, StrictModel
from .model import STAGE2_PREFIX_INIT_STD, ParScaleConfig
from .training import ScheduleConfig


class Stage2Config(StrictModel):
    parscale: ParScaleConfig = Field(
        default_factory=lambda: ParScaleConfig(streams=4, prefix_init_std=STAGE2_PREFIX_INIT_STD),
        description="The ParScale model of stage 2 (streams >= 2); its prefix_init_std defaults to "
        f"{STAGE2_PREFIX_INIT_STD} (STAGE2_PREFIX_INIT_STD), not the from-scratch 0.02.",
    )
    tokens: Count = Field(gt=0, description="Stage-2 token budget (the paper: a small share of stage 1's).")
    schedule: ScheduleConfig = Field(
        default_factory=lambda: ScheduleConfig(decay_fraction=1.0),
        description="Stage 2 anneals by default (decay over the whole budget).",
    )
    lr: Scaled | None = Field(None, gt=0, description="Peak LR of stage 2; default: optimizer.lr.")
    dense_baseline: bool = Field(True, description="Also continue the dense model for the same tokens.")
    prefix_control: bool = Field(
        False,
        description="Also continue the dense model with one learned prefix per layer "
        "(parscale.single_prefix) for the same tokens: what prefix tuning "
        "alone gives.",
    )

    @field_validator("parscale", mode="before")
    @classmethod
    def _stage2_prefix_init_std(cls, value: object) -> object:
        """A ``stage2.parscale`` section that does not set prefix_init_std gets the stage-2 one."""
        if isinstance(value, dict):
            return {"prefix_init_std": STAGE2_PREFIX_INIT_STD, **value}
        return value

    init_from: str | None = Field(
        None,
        description="A dense portable checkpoint to start stage 2 from instead of training stage 1 (e.g. a "
        "pretrained model brought in by 'parscale convert import-hf'): the job prepares the data (with the "
        "checkpoint's tokenizer: tokenizer.model_path), converts it to ParScale, trains stage 2 and the controls "
        "from it; the model section is taken from the checkpoint.",
    )

    @model_validator(mode="after")
    def _parscale(self) -> Stage2Config:
        if self.parscale.streams < 2:
            raise ValueError("stage2.parscale.streams must be at least 2 (stage 1 is the dense model)")
        return self
