"""``parscale ablate``: stage-2 variants measured against the main job's own stage 2. Stage 1 is
shared, so a variant may change only what stage 2 reads: ``stage2.*`` and ``optimizer.*`` keys."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from .base import StrictModel

#: the key prefixes a variant may set (stage 1 is trained once, with the job's own settings)
VARIANT_KEYS = ("stage2.", "optimizer.")
#: the main job's own stage 2, which every variant is measured against
BASELINE = "baseline"
#: the controls the main job trains on the same stage-2 tokens (its config keys), as the report names them
CONTROLS = {"dense": "the dense model continued", "prefix1": "P = 1 with one learned prefix"}


class AblationVariant(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Folder name under run.output_dir/ablation/.")
    set: dict[str, Any] = Field(
        min_length=1,
        description="Dotted config keys and their values for this variant's stage 2, e.g. {stage2.parscale.eps: 0.0}.",
    )

    @field_validator("set")
    @classmethod
    def _stage2_only(cls, keys: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in keys if not k.startswith(VARIANT_KEYS)]
        if bad:
            raise ValueError(
                f"{bad}: a variant may set only {' / '.join(k + '*' for k in VARIANT_KEYS)} keys "
                "(stage 1 is shared by every variant)"
            )
        return keys


class AblationConfig(StrictModel):
    variants: list[AblationVariant] = Field(min_length=1, description="Stage-2 variants, each against the baseline.")
    seeds: int = Field(
        2,
        ge=1,
        description="Seeds per variant and for the baseline: seed i initialises the prefixes "
        "and the aggregator from run.seed + i; every run reads the same data "
        "order as the controls.",
    )

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, variants: list[AblationVariant]) -> list[AblationVariant]:
        names = [v.name for v in variants]
        if len(set(names)) != len(names) or BASELINE in names:
            raise ValueError(f"variant names must be unique and not '{BASELINE}' (got {names})")
        return variants
