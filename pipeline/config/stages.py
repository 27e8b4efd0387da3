"""``parscale run``'s stage 2, described inside the (stage-1) job config: the job's own sections
train the dense model; ``stage2`` says how the ParScale model continues from it, and whether a
dense control continues alongside for the comparison at equal stage-2 tokens."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Count, Scaled, StrictModel
from .model import ParScaleConfig
from .training import ScheduleConfig


class Stage2Config(StrictModel):
    parscale: ParScaleConfig = Field(
        default_factory=lambda: ParScaleConfig(streams=4), description="The ParScale model of stage 2 (streams >= 2)."
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

    @model_validator(mode="after")
    def _parscale(self) -> Stage2Config:
        if self.parscale.streams < 2:
            raise ValueError("stage2.parscale.streams must be at least 2 (stage 1 is the dense model)")
        return self
