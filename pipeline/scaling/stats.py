"""Paired comparisons over seeds: the mean difference a - b with a t interval, and a verdict from a
stated rule (issue 28). Two arms trained with the same seed share the backbone's initialisation and
the data order, so their difference cancels what the seed does to both; the interval is over seeds.

The rule, with d > 0 the smallest gain worth having (losses: lower is better, so a gain is a
negative difference):

- *shown*: the whole interval lies below 0 (a is better, even if by less than d);
- *ruled out*: the whole interval lies above -d (no gain of d or more);
- *inconclusive*: anything else, and always with a single pair (no interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy.stats import t as student_t

SHOWN, RULED_OUT, INCONCLUSIVE = "shown", "ruled out", "inconclusive"


@dataclass(frozen=True)
class Comparison:
    label: str
    diffs: tuple[float, ...]  # paired differences a_i - b_i, one per seed (negative = a better, lower loss)
    mean: float
    low: float | None  # 95% two-sided t interval of the mean difference (None with a single pair)
    high: float | None
    margin: float  # d: a difference above -d is "no practical gain"
    verdict: str  # "shown" | "ruled out" | "inconclusive"

    def as_dict(self) -> dict:
        return {**asdict(self), "diffs": list(self.diffs)}


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided t interval of the mean of diffs (n - 1 degrees of freedom); None for n < 2."""
    n = len(diffs)
    if n < 2:
        return None
    mean = math.fsum(diffs) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def _verdict(low: float | None, high: float | None, margin: float) -> str:
    if low is None or high is None:
        return INCONCLUSIVE
    if high < 0:
        return SHOWN
    if low > -margin:
        return RULED_OUT
    return INCONCLUSIVE


def compare(label: str, a: Sequence[float], b: Sequence[float], margin: float, level: float = 0.95) -> Comparison:
    """Compare arm a with arm b seed by seed (a[i] and b[i] share seed i): the mean of a - b, its t
    interval at level, and the verdict of the rule above with margin d."""
    if len(a) != len(b) or not a:
        raise ValueError(f"{label}: a and b need the same number of seeds, at least one (got {len(a)} and {len(b)})")
    if not margin >= 0 or not 0 < level < 1:
        raise ValueError(f"{label}: the margin must be >= 0 and the level in (0, 1) (got {margin}, {level})")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b, strict=True))
    if not all(math.isfinite(d) for d in diffs):
        raise ValueError(f"{label}: a non-finite loss in {list(a)} or {list(b)}")
    interval = t_interval(diffs, level)
    low, high = interval if interval is not None else (None, None)
    return Comparison(label, diffs, math.fsum(diffs) / len(diffs), low, high, margin, _verdict(low, high, margin))


def verdict_rule(margin: float, level: float = 0.95) -> str:
    """The rule in one sentence, for a report."""
    pct = f"{100 * level:g}%"
    return (
        f"Each comparison is the mean paired difference over seeds (same seed: same backbone initialisation and "
        f"data order) with its {pct} t interval; it is *shown* when the whole interval lies below 0, *ruled out* "
        f"when the whole interval lies above -{margin:g} nats (no gain of {margin:g} or more), and *inconclusive* "
        f"otherwise, as it always is with a single seed."
    )
