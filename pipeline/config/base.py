"""Shared building blocks of the typed job config: a strict base model and numeric types that
accept the spellings people write in YAML (``20e9``, ``20B``, ``1.5M``, ``989T``)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12, "P": 10**15}
_NUMBER = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([KMBGTP]?)\s*$")


class StrictModel(BaseModel):
    """Every config section: unknown keys are refused, assignments are re-validated, and no number
    may be infinite or NaN (``lr: .inf`` is an error, not a run that diverges at step 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def _parse_scaled(value: object) -> object:
    """'20e9', '20B', '1.5M', 2e10 -> a float; anything else is left for pydantic to judge.

    PyYAML reads ``20e9`` (no dot) as a string, so budgets written the natural way need this.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _NUMBER.match(value.replace(",", ""))
        if not match:
            return value
        return float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2)]
    return value


def _integral(value: object) -> object:
    value = _parse_scaled(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected a whole number, got {value}")
        return int(value)
    return value


# A positive whole count (tokens, samples) that may be written 20e9, 20B, 1.5M or 20_000_000_000.
Count = Annotated[int, BeforeValidator(_integral)]
# A float that may be written with an SI-like suffix: 989T, 3e-4.
Scaled = Annotated[float, BeforeValidator(_parse_scaled)]
