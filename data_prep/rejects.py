"""Counting rejected records by reason, keeping the first few locations of each as examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

EXAMPLES_PER_REASON = 5


@dataclass
class RejectLog:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_PER_REASON:
            kept.append(where)

    def merge(self, other: RejectLog) -> None:
        """Add ``other`` (a later part of the same input), keeping the earliest examples."""
        self.counts.update(other.counts)
        for reason, wheres in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(wheres[: EXAMPLES_PER_REASON - len(kept)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        reasons = sorted(self.counts)
        return {
            "counts": {r: self.counts[r] for r in reasons},
            "examples": {r: self.examples.get(r, []) for r in reasons},
        }

    @classmethod
    def from_dict(cls, data: dict) -> RejectLog:
        return cls(Counter(data["counts"]), {k: list(v) for k, v in data["examples"].items()})
