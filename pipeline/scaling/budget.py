"""The two-stage budget finding: at the largest size, from every stage-2 run's evaluations (P = 1:
the dense model continued), the stage-2 budget in tokens per non-embedding parameter at which the
ordering P = 1 > 2 > 4 > ... appears and then holds, or the largest budget tried without it.
Every run of a size shares the schedule's shape and the validation batches, so the losses at equal
stage-2 tokens compare; an intermediate point is mid-schedule (the learning rate not yet annealed),
which the report says."""

from __future__ import annotations

from itertools import pairwise

from ..config import RunPaths
from ..mainjob.stages import stage2_key
from ..training.metrics import read_records
from .inference_cost import non_embedding


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
    for i, row in enumerate(rows):
        if all(r["ordered"] for r in rows[i:]):
            return row["tokens_per_param"]
    return None


def budget_curve(exp) -> dict:
    """{size, params, streams, rows: [{tokens, tokens_per_param, losses, ordered}], appears_at (tokens
    per parameter from which the ordering holds at every later point; None if it never settles),
    largest_tried} for the experiment's largest size."""
    name, job = max(exp.jobs.items(), key=lambda kv: non_embedding(kv[1].cfg.model, 1))
    params = non_embedding(job.cfg.model, 1)
    keys = {p: ("dense" if p == 1 else stage2_key(p)) for p in exp.streams}
    curves = {p: _val_losses(job.configs[key]) for p, key in keys.items()}
    common = sorted(set.intersection(*(set(c) for c in curves.values()))) if curves else []
    rows = [
        {
            "tokens": t,
            "tokens_per_param": t / params,
            "losses": [curves[p][t] for p in exp.streams],
            "ordered": ordered([curves[p][t] for p in exp.streams]),
        }
        for t in common
    ]
    return {
        "size": name,
        "params": params,
        "streams": list(exp.streams),
        "rows": rows,
        "appears_at": appears_at(rows),
        "largest_tried": rows[-1]["tokens_per_param"] if rows else None,
    }


def budget_lines(curve: dict) -> list[str]:
    """The report's section: a table of the losses at each evaluation, and the finding."""
    streams = curve["streams"]
    if not curve["rows"]:
        return ["No stage-2 evaluations shared by every P at the largest size (set eval.interval_steps)."]
    lines = [
        f"Size {curve['size']} (N = {curve['params']:,}); P=1 is the dense model continued. Intermediate points "
        "are mid-schedule (stage 2 anneals over its whole budget).",
        "",
        "| stage-2 tokens | tokens / parameter | " + " | ".join(f"P={p}" for p in streams) + " | ordered |",
        "|" + "---|" * (3 + len(streams)),
    ]
    for r in curve["rows"]:
        lines.append(
            f"| {r['tokens']:,} | {r['tokens_per_param']:.3f} | "
            + " | ".join(f"{v:.4f}" for v in r["losses"])
            + f" | {'yes' if r['ordered'] else 'no'} |"
        )
    order = " > ".join(f"P={p}" for p in streams)
    if curve["appears_at"] is not None:
        finding = (
            f"The ordering {order} appears at {curve['appears_at']:.3f} stage-2 tokens per parameter and holds "
            f"at every later evaluation (largest budget tried: {curve['largest_tried']:.3f})."
        )
    else:
        finding = (
            f"The ordering {order} does not settle up to the largest budget tried, "
            f"{curve['largest_tried']:.3f} stage-2 tokens per parameter."
        )
    return [*lines, "", finding]


__all__ = ["appears_at", "budget_curve", "budget_lines", "ordered"]
