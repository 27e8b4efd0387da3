"""The two-stage budget finding: at the largest size, from every stage-2 run's evaluations (P = 1:
the dense model continued), the stage-2 budget (as a fraction of stage 1 and in tokens per
non-embedding parameter) at which the ordering P = 1 > 2 > 4 > ... appears and then holds, or the
largest budget tried without it. Every run of a size shares the schedule's shape and the validation
batches, so the losses at equal stage-2 tokens compare; an intermediate point is mid-schedule (the
learning rate not yet annealed), which the report says.

At each point the loss of a P is the mean over its stage-2 seeds. Where the ordering appears is
claimed only when every P has two seeds or more at that point (issue 28, item 9) and every step of
the ordering is wider than the widest seed range there and at every later point; with one seed the
report says "not claimed: one seed", with steps inside the seed range "not established"."""

from __future__ import annotations

from itertools import pairwise

from ..config import RunPaths
from ..mainjob.stages import stage2_key
from ..training.metrics import read_records
from .inference_cost import non_embedding

MIN_SEEDS = 2  # seeds of every P at a point before the report says the ordering appears there


def stage2_fraction(scaling) -> float | None:
    """``scaling.stage2_fraction`` (stage-2 tokens as a fraction of ``train.tokens``), None where unset."""
    return scaling.stage2_fraction


def stage2_seeds(scaling) -> int:
    """``scaling.stage2_seeds``: stage-2 seeds at the largest size."""
    return scaling.stage2_seeds


def _val_losses(loaded) -> dict[int, float]:
    """tokens seen -> validation loss, from one run's evaluation records."""
    path = RunPaths.of(loaded.config).metrics
    records = read_records(path) if path.exists() else []
    return {r["tokens_seen"]: r["val_loss"] for r in records if r.get("kind") == "eval" and "tokens_seen" in r}


def ordered(losses: list[float]) -> bool:
    """Whether the losses (in P order) fall strictly."""
    return all(a > b for a, b in pairwise(losses))


def appears_at(rows: list[dict]) -> float | None:
    """The first budget (tokens per parameter) from which every later row is ordered; None if the
    last row is not."""
    row = _first_holding(rows)
    return None if row is None else row["tokens_per_param"]


def _first_holding(rows: list[dict], holds=lambda r: r["ordered"]) -> dict | None:
    for i, row in enumerate(rows):
        if all(holds(r) for r in rows[i:]):
            return row
    return None


def resolved(row: dict) -> bool:
    """Whether the ordering at a point stands out of the seed noise: the seed means are ordered and
    every step from one P to the next is wider than the widest range of one P's seeds there."""
    ranges = [v for v in row.get("seed_range") or [] if v is not None]
    return row["ordered"] and bool(ranges) and min(a - b for a, b in pairwise(row["losses"])) > max(ranges)


def claimable(row: dict, min_seeds: int = MIN_SEEDS) -> bool:
    """Whether a point may carry the claim "the ordering appears here": every P has ``min_seeds``
    seeds there (a row without ``seeds`` has one of each)."""
    return min(row.get("seeds") or [1]) >= min_seeds


def budget_curve(exp) -> dict:
    """{size, params, stage1_tokens, streams, rows: [{tokens, fraction (of stage 1), tokens_per_param,
    losses (seed means), seeds, seed_range (max - min over seeds, None with one), ordered}],
    appears_at (tokens per parameter from which the ordering holds at every later point; None if it
    never settles), appears_at_fraction, claimed (whether every P has >= 2 seeds there),
    largest_tried} for the experiment's largest size."""
    name, job = max(exp.jobs.items(), key=lambda kv: non_embedding(kv[1].cfg.model, 1))
    params = non_embedding(job.cfg.model, 1)
    stage1 = job.cfg.train.tokens
    keys = {p: ("dense" if p == 1 else stage2_key(p)) for p in exp.streams}
    jobs = [job, *(exp.seed_jobs() if hasattr(exp, "seed_jobs") else [])]
    curves = {p: [_val_losses(j.configs[key]) for j in jobs] for p, key in keys.items()}
    common = sorted(set.intersection(*(set(c[0]) for c in curves.values()))) if curves else []
    rows = [point(t, params, stage1, [[c[t] for c in curves[p] if t in c] for p in exp.streams]) for t in common]
    first = _first_holding(rows)
    return {
        "size": name,
        "params": params,
        "stage1_tokens": stage1,
        "streams": list(exp.streams),
        "rows": rows,
        "appears_at": None if first is None else first["tokens_per_param"],
        "appears_at_fraction": None if first is None else first["fraction"],
        "claimed": (settled := _first_holding(rows, resolved)) is not None and claimable(settled),
        "largest_tried": rows[-1]["tokens_per_param"] if rows else None,
    }


def point(tokens: int, params: int, stage1: int, by_p: list[list[float]]) -> dict:
    """One evaluation point: each P's losses over its seeds -> the seed means and counts."""
    means = [sum(v) / len(v) for v in by_p]
    return {
        "tokens": tokens,
        "fraction": tokens / stage1,
        "tokens_per_param": tokens / params,
        "losses": means,
        "seeds": [len(v) for v in by_p],
        "seed_range": [max(v) - min(v) if len(v) > 1 else None for v in by_p],
        "ordered": ordered(means),
    }


def budget_lines(curve: dict) -> list[str]:
    """The report's section: a table of the losses at each evaluation, and the finding."""
    streams = curve["streams"]
    if not curve["rows"]:
        return ["No stage-2 evaluations shared by every P at the largest size (set eval.interval_steps)."]
    seeds = curve["rows"][-1].get("seeds") or [1] * len(streams)
    lines = [
        f"Size {curve['size']} (N = {curve['params']:,}; stage 1: {curve.get('stage1_tokens', 0):,} tokens); "
        "P=1 is the dense model continued. Losses are the mean over stage-2 seeds ("
        + ", ".join(f"P={p}: {n}" for p, n in zip(streams, seeds, strict=True))
        + "). Intermediate points are mid-schedule (stage 2 anneals over its whole budget). Smallest gap: the "
        "smallest drop in loss from one P to the next (negative: not ordered); largest seed range: the widest "
        "spread of one P's seeds.",
        "",
        "| stage-2 tokens | fraction of stage 1 | tokens / parameter | "
        + " | ".join(f"P={p}" for p in streams)
        + " | smallest gap | largest seed range | ordered |",
        "|" + "---|" * (6 + len(streams)),
    ]
    for r in curve["rows"]:
        lines.append(
            f"| {r['tokens']:,} | {r.get('fraction', float('nan')):.3f} | {r['tokens_per_param']:.3f} | "
            + " | ".join(f"{v:.4f}" for v in r["losses"])
            + f" | {_smallest_gap(r['losses'])} | {_largest_range(r)} | {'yes' if r['ordered'] else 'no'} |"
        )
    return [*lines, "", finding(curve)]


def _smallest_gap(losses: list[float]) -> str:
    return f"{min(a - b for a, b in pairwise(losses)):+.4f}"


def _largest_range(row: dict) -> str:
    ranges = [v for v in row.get("seed_range") or [] if v is not None]
    return f"{max(ranges):.4f}" if ranges else "n/a (one seed)"


def finding(curve: dict) -> str:
    """Where the ordering appears, only where every P has >= 2 seeds there; else "not claimed"."""
    streams = curve["streams"]
    order = " > ".join(f"P={p}" for p in streams)
    rows = curve["rows"]
    first = _first_holding(rows)
    if first is None:
        one = "" if claimable(rows[-1]) else " (one seed of some P: not a claim that it never appears)"
        return (
            f"The ordering {order} does not settle up to the largest budget tried, "
            f"{curve['largest_tried']:.3f} stage-2 tokens per parameter{one}."
        )
    if not claimable(first):
        few = [p for p, n in zip(streams, first.get("seeds") or [1] * len(streams), strict=True) if n < MIN_SEEDS]
        return (
            f"Where the ordering {order} appears: not claimed: one seed (P = {', '.join(map(str, few))} at the "
            f"largest size; a claim needs >= {MIN_SEEDS} seeds of every P, scaling.stage2_seeds)."
        )
    settled = _first_holding(rows, resolved)
    if settled is None:
        return (
            f"The seed means are ordered {order} from {_where(first)} stage-2 tokens per parameter on (largest "
            f"budget tried: {curve['largest_tried']:.3f}), but where the ordering appears is not established: "
            f"the smallest step there ({_smallest_gap(first['losses'])}) is within the largest seed range "
            f"({_largest_range(first)}); a claim needs every step wider than the seeds' range from that point on "
            "(more seeds: scaling.stage2_seeds)."
        )
    return (
        f"The ordering {order} appears at {_where(settled)} stage-2 tokens per parameter and holds at every "
        f"later evaluation, each step wider than the seeds' range (largest budget tried: "
        f"{curve['largest_tried']:.3f}); smallest gap there {_smallest_gap(settled['losses'])}, largest seed "
        f"range {_largest_range(settled)}."
    )


def _where(row: dict) -> str:
    fraction = f"{row['fraction']:.3f} of stage 1, " if "fraction" in row else ""
    return f"{fraction}{row['tokens_per_param']:.3f}"


__all__ = [
    "MIN_SEEDS",
    "appears_at",
    "budget_curve",
    "budget_lines",
    "claimable",
    "finding",
    "ordered",
    "point",
    "resolved",
    "stage2_fraction",
    "stage2_seeds",
]
