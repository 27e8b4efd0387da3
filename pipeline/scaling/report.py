"""The two-stage scaling experiment's report: ``report/scaling.md`` (loss table, paired comparisons
with their intervals and verdicts, fitted law beside the paper's with k's profile interval,
inference cost beside the paper's), ``report/scaling.png`` (loss against N for each P and
against P for each size, with the fitted curves), ``report/results.json`` (every number)."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

from ..utils.hardware import hardware
from ..utils.plots import save, two_panels
from ..utils.report_format import config_line, number, section, table, with_delta, write_json, write_markdown
from .budget import budget_curve, budget_lines, stage2_fraction
from .from_scratch_report import comparison_table
from .inference_cost import PAPER
from .law import PAPER_K, LawFit
from .stats import Comparison, compare, verdict_rule

NOISE = 0.1  # latency increases under 10% of the P=1 latency are within this CPU's run-to-run noise
K_MIN_FOR_COST = 0.01  # below it the "dense equivalent" is the model itself and the ratios mean nothing
MIB = 2**20

SPREAD_TEXT = (
    "How different the streams are: RMS distance of each stream's final hidden states (after the "
    "last norm, before the merge) from the streams' mean, relative to the mean, on the validation "
    "batches (0 = identical streams, which makes P streams worth one)."
)


def plot(rows: list[dict], fit: LawFit, path: Path) -> Path:
    streams = sorted({r["streams"] for r in rows})
    sizes = sorted({(r["params"], r["size"]) for r in rows})
    fig, (by_n, by_p) = two_panels()
    lo, hi = sizes[0][0] / 1.3, sizes[-1][0] * 1.3
    grid = [lo * (hi / lo) ** (i / 60) for i in range(61)]
    for p in streams:
        pts = sorted((r["params"], r["val_loss"]) for r in rows if r["streams"] == p)
        (line,) = by_n.plot([n for n, _ in pts], [v for _, v in pts], "o", label=f"P={p}")
        by_n.plot(grid, [fit.predict(n, p) for n in grid], "-", color=line.get_color(), linewidth=1)
    by_n.set(
        xscale="log",
        xlabel="non-embedding parameters N",
        ylabel="validation loss",
        title=f"loss vs N (lines: fitted law, k = {fit.k:.3f})",
    )
    p_grid = [1 + i * (max(streams) - 1) / 60 for i in range(61)]
    for n, name in sizes:
        pts = sorted((r["streams"], r["val_loss"]) for r in rows if r["params"] == n)
        (line,) = by_p.plot([p for p, _ in pts], [v for _, v in pts], "o", label=f"{name} ({n / 1e6:.2f}M)")
        by_p.plot(p_grid, [fit.predict(n, p) for p in p_grid], "-", color=line.get_color(), linewidth=1)
    by_p.set(xscale="log", xlabel="parallel streams P", ylabel="validation loss", title="loss vs P per size")
    by_p.set_xticks(streams, [str(p) for p in streams])
    by_p.minorticks_off()
    return save(fig, (by_n, by_p), path)


def _loss_table(exp, rows: list[dict]) -> list[str]:
    control = any(r.get("prefix_control_val_loss") is not None for r in rows)
    head = ["size", "shape", "N (non-embedding)", "stage 1", *(f"P={p}" for p in exp.streams)]
    if control:
        head.append("P=1 + one prefix")
    return table(head, (_loss_cells(exp, rows, name, control) for name in exp.jobs))


def _loss_cells(exp, rows: list[dict], name: str, control: bool) -> list[str]:
    mine = {r["streams"]: r for r in rows if r["size"] == name}
    base = mine[1]["val_loss"]
    m = exp.jobs[name].cfg.model
    cells = [
        name,
        f"{m.num_layers}x{m.hidden_size}, FFN {m.ffn_hidden_size}",
        f"{mine[1]['params']:,}",
        f"{mine[1]['stage1_val_loss']:.4f}",
        f"{base:.4f}",
        *(with_delta(mine[p]["val_loss"], base) for p in exp.streams if p > 1),
    ]
    return cells + [with_delta(mine[1]["prefix_control_val_loss"], base)] if control else cells


def _seed_lines(rows: list[dict]) -> list[str]:
    """Which cells are seed means, and how far their seeds are apart."""
    many = [r for r in rows if r.get("seeds", 1) > 1]
    if not many:
        return ["One stage-2 seed per cell."]
    sizes = sorted({r["size"] for r in many})
    ranges = ", ".join(
        f"{r['size']} P={r['streams']} {max(r['seed_losses']) - min(r['seed_losses']):.4f}" for r in many
    )
    return [
        f"Stage-2 seeds: {', '.join(sizes)}: the mean of {min(r['seeds'] for r in many)}+ seeds at every P "
        f"(range over seeds: {ranges}); every other cell: one seed."
    ]


def paired_comparisons(rows: list[dict], margin: float) -> list[tuple[str, Comparison]]:
    """(size, comparison) for every size: each P > 1 against P = 1 (the dense model continued), then
    against P = 1 with one learned prefix, over the stage-2 seeds both arms have (seed i of every arm:
    the same stage 1, stage-2 data and validation batches; one pair: no interval, so inconclusive)."""
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = {r["streams"]: r for r in rows if r["size"] == size}
        base, streams = mine[1], sorted(p for p in mine if p > 1)
        out += [
            (size, compare(f"P={p} vs P=1 (dense continued)", mine[p]["seed_losses"], base["seed_losses"], margin))
            for p in streams
        ]
        prefix = base.get("prefix_control_seed_losses") or [base.get("prefix_control_val_loss")]
        seeds = [i for i, v in enumerate(prefix) if v is not None]
        if seeds:
            label = "P={} vs P=1 + one prefix" + ("" if len(seeds) > 1 else f" (seed {seeds[0]})")
            out += [
                (
                    size,
                    compare(
                        label.format(p), [mine[p]["seed_losses"][i] for i in seeds], [prefix[i] for i in seeds], margin
                    ),
                )
                for p in streams
            ]
    return out


def _spread_table(exp, rows: list[dict]) -> list[str]:
    streams = [p for p in exp.streams if p > 1]
    spreads = {(r["size"], r["streams"]): r.get("stream_spread") for r in rows}
    return table(
        ["size", *(f"P={p}" for p in streams)],
        ([name, *(number(spreads[name, p]) for p in streams)] for name in exp.jobs),
    )


def _fit_table(fits: dict) -> list[str]:
    free, fixed = fits["free"], fits["paper_k"]
    return table(
        ["", "ours: all free", "ours: k fixed at the paper's", "paper"],
        [
            ("E", f"{free.E:.4f}", f"{fixed.E:.4f}", "(other data, tokenizer and scale)"),
            ("A", f"{free.A:.4g}", f"{fixed.A:.4g}", ""),
            ("alpha", f"{free.alpha:.4f}", f"{fixed.alpha:.4f}", ""),
            ("k", f"**{free.k:.4f}**", f"{fixed.k:.2f} (fixed)", f"**{PAPER_K}** (Stack-V2-Python)"),
            (
                "P=8 worth (k ln 8 + 1) x parameters, if the fit is identified",
                f"{free.param_multiplier(8):.3f}x",
                f"{fixed.param_multiplier(8):.3f}x",
                f"{PAPER_K * math.log(8) + 1:.2f}x (~1.8x)",
            ),
            ("Huber objective (sum, log L)", f"{free.huber:.3g}", f"{fixed.huber:.3g}", ""),
            ("RMS residual of log L", f"{free.rms_log_residual:.2e}", f"{fixed.rms_log_residual:.2e}", ""),
        ],
    )


def _inference_table(inference: list[dict]) -> list[str]:
    head = (
        "k | batch | P | ParScale ms/token | ParScale MiB | dense equivalent (N, hidden/FFN) | dense ms/token | "
        "dense MiB | P=1 ms/token | P=1 MiB | memory-increase ratio | latency-increase ratio"
    )
    return table(head, (_inference_cells(r) for r in inference))


def _inference_cells(r: dict) -> list[str]:
    return [
        f"{r['k']:.3f}",
        str(r["batch"]),
        str(r["streams"]),
        *_cost_cells(r["parscale"]),
        f"{r['dense_params']:,} ({r['dense_shape']})",
        *_cost_cells(r["dense"]),
        *_cost_cells(r["base"]),
        f"{r['memory_ratio']:.1f}x",
        _latency_ratio(r),
    ]


def _cost_cells(cost: dict) -> list[str]:
    return [f"{cost['seconds_per_token'] * 1e3:.2f}", f"{cost['bytes'] / MIB:.2f}"]


def _latency_ratio(r: dict) -> str:
    lat = f"{r['latency_ratio']:.2f}x" if math.isfinite(r["latency_ratio"]) else "n/a (no ParScale increase)"
    base = r["base"]["seconds_per_token"]
    if min(r[k]["seconds_per_token"] - base for k in ("parscale", "dense")) < NOISE * base:
        lat += " (an increase within timing noise)"  # a larger model measured faster is noise too
    return lat


def _falls_with_p(rows: list[dict], size: str) -> bool:
    losses = [r["val_loss"] for r in sorted((r for r in rows if r["size"] == size), key=lambda r: r["streams"])]
    return all(a > b for a, b in pairwise(losses))


def _findings(exp, rows: list[dict], fits: dict, inference: list[dict]) -> list[str]:
    monotone = [name for name in exp.jobs if _falls_with_p(rows, name)]
    out = [
        f"- Loss falls with every doubling of P at {len(monotone)} of {len(exp.jobs)} sizes"
        + (f" ({', '.join(monotone)})." if monotone else "."),
        "- Best ParScale run against P=1 at equal stage-2 tokens (negative: ParScale lower): "
        + ", ".join(_best_gain(rows, name) for name in exp.jobs)
        + " nats.",
    ]
    top = max(exp.streams)
    spreads = {r["size"]: r.get("stream_spread") for r in rows if r["streams"] == top}
    if all(v is not None for v in spreads.values()):
        out.append(
            f"- The P={top} streams stay this far apart (relative RMS, see above): "
            + ", ".join(f"{name} {v:.3f}" for name, v in spreads.items())
            + "; the closer to 0, the less the extra streams can add over one."
        )
    out.append(_fit_finding(rows, fits))
    return out + _memory_finding(inference)


def _fit_finding(rows: list[dict], fits: dict) -> str:
    """The fitted k with its profile interval, or "not identified"; a degenerate fit (E at ~0, or k on
    its bound) is named as such, and P is priced only from an identified, non-degenerate fit."""
    free, fixed, interval = fits["free"], fits["paper_k"], fits["k_interval"]
    flags = []
    if getattr(free, "k_at_bound", False):
        flags.append("k sits on its bound (a bound, not an estimate)")
    if free.E < 0.01 * min(r["val_loss"] for r in rows):
        flags.append(f"E went to ~0 ({free.E:.2g}) with alpha {free.alpha:.3f}: the fit is degenerate")
    top = max(r["streams"] for r in rows)
    if flags or not interval.identified:
        worth = "not a measure of what P is worth"
    else:
        worth = (
            f"P={top} worth {free.param_multiplier(top):.2f}x its parameters "
            f"({1 + interval.low * math.log(top):.2f}x to {1 + interval.high * math.log(top):.2f}x)"
        )
    caution = "; ".join(flags) + "; " if flags else ""
    return (
        f"- Fitted k = {free.k:.3f} (paper {PAPER_K}); {interval.note}; {caution}{worth}. With k fixed at "
        f"{PAPER_K} the fit's Huber objective is {fixed.huber / max(free.huber, 1e-300):.1f}x the free fit's."
    )


def _fit_lines(fits: dict) -> list[str]:
    """Under the fit table: k's interval and which parameters the sizes identify."""
    return [
        f"- {fits['k_interval'].note}",
        "- Identified by these sizes: "
        + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in fits["identified"].items()),
    ]


def _best_gain(rows: list[dict], size: str) -> str:
    """'a P=2 -0.0044': the size's lowest-loss P > 1 and its difference to P=1."""
    mine = {r["streams"]: r["val_loss"] for r in rows if r["size"] == size}
    best = min((p for p in mine if p > 1), key=mine.get)
    return f"{size} P={best} {mine[best] - mine[1]:+.4f}"


def _memory_finding(inference: list[dict]) -> list[str]:
    """The memory-increase ratio at every batch size (the paper's k where measured), < 1 named as
    ParScale's increase being the larger."""
    if not inference:
        return []
    k = PAPER_K if any(r["k"] == PAPER_K for r in inference) else inference[0]["k"]
    mine = [r for r in inference if r["k"] == k]
    parts = []
    for batch in sorted({r["batch"] for r in mine}):
        at = [r for r in mine if r["batch"] == batch]
        ratios = ", ".join(f"P={r['streams']} {r['memory_ratio']:.2f}x" for r in at)
        worse = " (below 1: ParScale's memory increase is the larger)" if any(r["memory_ratio"] < 1 for r in at) else ""
        parts.append(f"batch {batch}: {ratios}{worse}")
    return [
        f"- Memory-increase ratio (k = {k:.3f}), {'; '.join(parts)}; paper {PAPER['memory']:.0f}x ({PAPER['where']})."
    ]


def _stage2_budget(exp) -> str:
    """Stage 2's tokens: one figure and its fraction of stage 1, or per size when the budget is set in
    tokens per parameter (then the fraction of stage 1 differs across sizes, which it says)."""
    per_param = exp.cfg.scaling.stage2_tokens_per_param
    stage1 = exp.cfg.train.tokens
    if stage2_fraction(exp.cfg.scaling) or not per_param:
        tokens = next(iter(exp.jobs.values())).cfg.stage2.tokens
        return f"{tokens:,} tokens ({tokens / stage1:.3g} of stage 1 at every size)"
    sizes = ", ".join(f"{name} {job.cfg.stage2.tokens:,}" for name, job in exp.jobs.items())
    fractions = ", ".join(f"{name} {job.cfg.stage2.tokens / stage1:.3g}" for name, job in exp.jobs.items())
    return (
        f"{per_param:g} x N tokens (N: non-embedding parameters; {sizes} tokens; as a fraction of stage 1 "
        f"it differs across sizes: {fractions})"
    )


def _inference(exp, free: LawFit, console) -> list[dict]:
    """Decode cost at the paper's k and, where it is usable, ours: measured once, then read from
    ``inference.json`` while the k values, the settings and the stream counts stay the same."""
    ks = [PAPER_K] + ([free.k] if free.k >= K_MIN_FOR_COST and abs(free.k - PAPER_K) > 1e-3 else [])
    cache = exp.report_dir / "inference.json"
    key = {"ks": ks, "inference": exp.cfg.scaling.inference.model_dump(), "streams": exp.streams}
    try:
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["rows"]
    except (OSError, ValueError, KeyError):
        pass
    console.print("measuring decode latency and memory (ParScale vs dense equivalents) ...")
    inference = exp.inference(ks)
    write_json(cache, {"key": key, "rows": inference, "hardware": hardware()})
    return inference


def _setup(exp) -> str:
    cfg = exp.cfg
    return config_line(exp.path, exp.overrides) + (
        f". Each size: stage 1 dense on {cfg.train.tokens:,} tokens, then stage 2 on {_stage2_budget(exp)} at "
        f"P = {', '.join(map(str, exp.streams))} (P=1: the dense model continued with the same schedule; "
        f"prefix length {cfg.stage2.parscale.prefix_len}). Validation loss on the same batches for every run "
        f"({cfg.eval.max_batches} batches). Stage-2 seeds at the largest size ({exp.largest}): {exp.seeds} at every "
        "P (seed i: the ParScale tensors from run.seed + i, the stage-2 data i budgets further on, the same "
        "stage 1); elsewhere one."
    )


def _inference_setup(exp, rows: list[dict]) -> str:
    inf = exp.cfg.scaling.inference
    return (
        f"Decoding {inf.new_tokens} tokens after a {inf.prompt_len}-token prompt "
        f"with the largest size (N = {max(r['params'] for r in rows):,} non-embedding parameters); memory = "
        "weights + KV cache (exact bytes); ratios = the dense model's increase "
        "over P=1 divided by ParScale's (> 1: ParScale cheaper), the paper's measure. Dense equivalents use "
        f"N (k ln P + 1) with the paper's k and, where it is usable, ours. Measured on: {hardware()}. "
        f"Paper: {PAPER['memory']:.0f}x less memory increase, {PAPER['latency']:.0f}x less latency increase "
        f"({PAPER['where']})."
    )


def write_report(exp, console) -> Path:
    out = exp.report_dir
    rows = exp.results()
    fits = exp.fits(rows)
    margin = exp.cfg.scaling.margin
    found = paired_comparisons(rows, margin)
    inference = _inference(exp, fits["free"], console)
    plot(rows, fits["free"], out / "scaling.png")
    budget = budget_curve(exp)
    write_json(
        out / "results.json",
        {
            "rows": rows,
            "margin": margin,
            "comparisons": [{"size": size, **c.as_dict()} for size, c in found],
            "fits": {
                "free": fits["free"].as_dict(),
                "paper_k": fits["paper_k"].as_dict(),
                "k_interval": fits["k_interval"].as_dict(),
                "identified": fits["identified"],
            },
            "inference": inference,
            "budget": budget,
            "paper": {"k": PAPER_K, **PAPER},
            "hardware": hardware(),
        },
    )
    huber = (
        f"Huber loss (delta {exp.cfg.scaling.huber_delta:g}) on log L, L-BFGS from a grid of starts, as the paper did."
    )
    return write_markdown(
        out / "scaling.md",
        [
            *section(f"{exp.cfg.run.name}: the parallel scaling law at small scale", _setup(exp), level=1),
            *section("Validation loss (difference to P=1 in brackets)", _loss_table(exp, rows), *_seed_lines(rows)),
            *section(
                "Paired comparisons",
                verdict_rule(margin),
                "Stage-2 seeds share stage 1; seed i of every P reads the same stage-2 data.",
                comparison_table(found),
            ),
            *section(
                "Stage-2 budget: when the P ordering appears",
                budget_lines(budget),
                SPREAD_TEXT,
                _spread_table(exp, rows),
            ),
            *section(
                "Fitted law: L = E + (A / (N (k ln P + 1)))^alpha",
                huber,
                _fit_table(fits),
                _fit_lines(fits),
                "![loss vs N and P with the fitted law](scaling.png)",
            ),
            *section(
                "Inference cost: P streams vs the dense model of equal predicted loss",
                _inference_setup(exp, rows),
                _inference_table(inference),
            ),
            *section("What held at this scale", _findings(exp, rows, fits, inference)),
        ],
    )
