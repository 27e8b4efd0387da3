"""``parscale scaling``: the model sizes and stream counts of the scaling experiment, and how its
inference cost is measured. Everything else (data, stage 1, stage 2 tokens and schedule) comes from
the job's own sections, so each size is exactly a ``parscale run`` with the model resized."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import StrictModel


class ScalingSize(StrictModel):
    """One model size: the ``model`` keys it changes (unset keys keep the job's ``model``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Folder name under run.output_dir.")
    num_layers: int | None = Field(None, ge=1)
    hidden_size: int | None = Field(None, ge=1)
    ffn_hidden_size: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)

    def model_overrides(self) -> dict[str, int]:
        return self.model_dump(exclude={"name"}, exclude_none=True)


class InferenceCostConfig(StrictModel):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8], min_length=1, description="Decoding batch sizes.")
    prompt_len: int = Field(64, ge=1)
    new_tokens: int = Field(32, ge=1, description="Decoded tokens timed per run.")
    repeats: int = Field(5, ge=1, description="Timed runs per model; the fastest counts (noise only adds time).")


class ScalingConfig(StrictModel):
    mode: Literal["from_scratch", "two_stage"] = Field(
        "from_scratch",
        description="from_scratch: every P trained from initialisation on the same tokens, data "
        "order and schedule (the paper's law); two_stage: stage 1 dense, then stage 2 at "
        "every P from it.",
    )
    sizes: list[ScalingSize] = Field(min_length=3, description="At least three model sizes.")
    streams: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8],
        description="Stream counts; in two_stage mode P=1 is the dense model continued for the same stage-2 tokens.",
    )
    tokens_per_param: float = Field(
        20.0,
        gt=0,
        description="from_scratch: training tokens per non-embedding "
        "parameter of each size (every P and control of a size "
        "trains on the same tokens).",
    )
    stage2_tokens_per_param: float | None = Field(
        None,
        gt=0,
        description="two_stage: stage-2 tokens per non-embedding parameter of each size (None: "
        "stage2.tokens for every size).",
    )
    seeds: int = Field(2, ge=1, description="from_scratch: seeds at P=1 and at the largest P (the others: one).")
    matched_dense: bool = Field(
        True,
        description="from_scratch: for each P > 1 also a dense model widened to the "
        "ParScale model's non-embedding parameters, on the same tokens.",
    )
    prefix_control: bool = Field(
        True,
        description="from_scratch: also P = 1 with one learned prefix per layer "
        "(parscale.single_prefix), so prefix tuning can't pass for "
        "P-scaling.",
    )
    bootstrap: int = Field(30, ge=0, description="from_scratch: refits over resampled seeds for k's uncertainty.")
    huber_delta: float = Field(1e-3, gt=0, description="Huber loss threshold on log L residuals (the paper's fit).")
    inference: InferenceCostConfig = Field(default_factory=InferenceCostConfig)

    @field_validator("sizes")
    @classmethod
    def _unique_names(cls, sizes: list[ScalingSize]) -> list[ScalingSize]:
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise ValueError(f"size names must be unique (got {names})")
        return sizes

    @field_validator("streams")
    @classmethod
    def _streams(cls, streams: list[int]) -> list[int]:
        if 1 not in streams or len(set(streams)) < 3 or min(streams) < 1:
            raise ValueError(f"streams must hold 1 and at least two more counts >= 1 (got {streams})")
        return sorted(set(streams))
