"""``parscale scaling``: the model sizes and stream counts of the scaling experiment, and how its
inference cost is measured. Everything else (data, stage 1, stage 2 tokens and schedule) comes from
the job's own sections, so each size is exactly a ``parscale run`` with the model resized."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .base import Count, StrictModel


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
    sizes: list[ScalingSize] = Field(
        min_length=1,
        description="The model sizes. two_stage: at least three. from_scratch: the law is fitted with at least "
        "three; one size is the decisive mode (the paired comparisons alone).",
    )
    axis: Literal["width", "depth"] = Field(
        "width",
        description="from_scratch: what the sizes vary. width (the paper's): hidden, FFN and heads at one fixed "
        "num_layers, refused otherwise; depth: sizes may differ in num_layers (not the paper's axis).",
    )
    streams: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8],
        description="Stream counts; in two_stage mode P=1 is the dense model continued for the same stage-2 tokens.",
    )
    tokens: Count | None = Field(
        None,
        gt=0,
        description="from_scratch: training tokens of every run of every size (the paper: 42B for every size). "
        "Exactly one of scaling.tokens and scaling.tokens_per_param.",
    )
    tokens_per_param: float | None = Field(
        None,
        gt=0,
        description="from_scratch, instead of scaling.tokens: training tokens per backbone non-embedding "
        "parameter of each size (every run of a size trains on the same tokens); not the paper's design.",
    )
    stage2_tokens_per_param: float | None = Field(
        None,
        gt=0,
        description="two_stage: stage-2 tokens per non-embedding parameter of each size (None: "
        "stage2.tokens for every size).",
    )
    stage2_fraction: float | None = Field(
        None,
        gt=0,
        description="two_stage: stage-2 tokens as a fraction of stage 1's (train.tokens), the same at every "
        "size; None: stage2.tokens (or stage2_tokens_per_param where set).",
    )
    stage2_seeds: int = Field(
        2,
        ge=1,
        description="two_stage: stage-2 seeds at the largest size, at every P (seed i: the ParScale tensors from "
        "run.seed + i, the stage-2 data i budgets further on, the same stage 1 and validation batches); the "
        "report says where the P ordering appears only where every P has >= 2.",
    )
    seeds: int = Field(
        2,
        ge=1,
        description="from_scratch: seeds of every run (every P and every control); seed i is run.seed + i for "
        "all of them, so the runs of one seed share the backbone's initialisation and the data order.",
    )
    matched_dense: bool = Field(
        True,
        description="from_scratch: a dense model widened to a ParScale model's backbone + ParScale parameters, "
        "on the same tokens (is the gain just parameters?).",
    )
    matched_dense_streams: list[int] | None = Field(
        None,
        description="from_scratch: the P values that get a matched dense control (None: every P > 1).",
    )
    paper_k_dense: bool = Field(
        True,
        description="from_scratch: a dense model widened to (1 + k ln P) x the backbone at the largest P, with "
        "the paper's k: what the paper predicts that P is worth.",
    )
    prefix_control: bool = Field(
        True,
        description="from_scratch: also P = 1 with one learned prefix per layer "
        "(parscale.single_prefix), so prefix tuning can't pass for "
        "P-scaling.",
    )
    margin: float = Field(
        0.01,
        gt=0,
        description="d, the smallest gain in validation loss (nats) worth having: a comparison "
        "whose 95% interval lies above -d rules the gain out.",
    )
    huber_delta: float = Field(1e-3, gt=0, description="Huber loss threshold on log L residuals (the paper's fit).")
    inference: InferenceCostConfig = Field(default_factory=InferenceCostConfig)

    @field_validator("sizes")
    @classmethod
    def _unique_names(cls, sizes: list[ScalingSize]) -> list[ScalingSize]:
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise ValueError(f"size names must be unique (got {names})")
        return sizes

    @field_validator("sizes")
    @classmethod
    def _three_for_two_stage(cls, sizes: list[ScalingSize], info: ValidationInfo) -> list[ScalingSize]:
        if info.data.get("mode") == "two_stage" and len(sizes) < 3:
            raise ValueError(f"two_stage mode needs at least 3 sizes (got {len(sizes)})")
        return sizes

    @field_validator("streams")
    @classmethod
    def _streams(cls, streams: list[int], info: ValidationInfo) -> list[int]:
        """two_stage: 1 and at least two more counts; from_scratch: 1 and at least one more (the decisive
        mode compares P = 1 with one P)."""
        more = 2 if info.data.get("mode") == "two_stage" else 1
        if 1 not in streams or len(set(streams)) < 1 + more or min(streams) < 1:
            raise ValueError(f"streams must hold 1 and at least {more} more count(s) >= 1 (got {streams})")
        return sorted(set(streams))

    @field_validator("matched_dense_streams")
    @classmethod
    def _matched(cls, streams: list[int] | None) -> list[int] | None:
        if streams is not None and (not streams or min(streams) < 2):
            raise ValueError(f"matched_dense_streams: P values above 1 (got {streams})")
        return streams if streams is None else sorted(set(streams))

    @model_validator(mode="after")
    def _budget(self) -> ScalingConfig:
        """from_scratch: one budget, the absolute one or the per-parameter one; the controls' P are trained."""
        if self.mode != "from_scratch":
            if self.stage2_fraction is not None and self.stage2_tokens_per_param is not None:
                raise ValueError(
                    "set one of scaling.stage2_fraction (the same share of stage 1 at every size) and "
                    "scaling.stage2_tokens_per_param, not both"
                )
            return self
        if (self.tokens is None) == (self.tokens_per_param is None):
            given = "both are set" if self.tokens is not None else "neither is set"
            raise ValueError(
                f"from_scratch needs exactly one of scaling.tokens (the same tokens for every size, the paper's "
                f"design) and scaling.tokens_per_param: {given}"
            )
        missing = sorted(set(self.matched_dense_streams or []) - set(self.streams))
        if missing:
            raise ValueError(f"scaling.matched_dense_streams: {missing} not in scaling.streams {self.streams}")
        return self
