"""The from-scratch experiment's report: ``report/scaling.md`` (every run's loss with its backbone
and ParScale parameters, each comparison as a paired difference over seeds with its 95% interval
and verdict, the stream diagnostics, the law's fit with k's profile interval and what the sizes
identify, or why there is none), ``report/scaling.png`` and ``report/results.json``."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..config.run_paths import RunPaths
from ..training.metrics import read_records
from ..utils.hardware import hardware
from ..utils.plots import save, two_panels
from ..utils.report_format import config_line, number, section, table, write_json, write_markdown
from .law import PAPER_K, LawFit
from .stats import Comparison, compare, verdict_rule

ARM_TEXT = {
    "parscale": "P={p}",
    "matched_dense": "dense matched to P={p}",
    "paper_k_dense": "dense at 1 + {k} ln {p}",
    "single_prefix": "P=1 + one prefix",
}
CONTROL_TEXT = (
    "Dense controls: *dense matched to P* is the size widened to that ParScale model's backbone + ParScale "
    "parameters (is the gain just parameters?); *dense at 1 + k ln P* is widened to what the paper's k = "
    f"{PAPER_K} says P streams are worth (a difference near 0 is the paper's prediction; *shown* means P is worth "
    "more than that). Both train on the same tokens with the same schedule."
)
SPREAD_TEXT = (
    "Stream spread: RMS distance of each stream's final states from the streams' "
    "mean, relative to the mean (0: identical streams)."
)


# ------------------------------------------------------------------ grouping


def arms_of(rows: list[dict], size: str) -> dict[tuple[str, int], dict[int, float]]:
    """{(kind, P): {seed: val loss}} of one size."""
    out: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        if r["size"] == size:
            out.setdefault((r["kind"], r["streams"]), {})[r["seed"]] = r["val_loss"]
    return out


def sizes_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["size"] for r in rows))


def _pair(label: str, a: dict[int, float] | None, b: dict[int, float] | None, margin: float) -> Comparison | None:
    """a - b over the seeds both arms have (None when they share none)."""
    seeds = sorted(set(a or {}) & set(b or {}))
    if not seeds or a is None or b is None:
        return None
    return compare(label, [a[s] for s in seeds], [b[s] for s in seeds], margin)


def comparisons(rows: list[dict], margin: float) -> list[tuple[str, Comparison]]:
    """(size, comparison) for every size, in this order: each P vs P = 1; each P vs its matched
    dense control; each P vs one prefix; the largest P vs the dense model at 1 + k ln P (paper's k).
    A comparison whose arms were not trained is left out."""
    out = []
    for size in sizes_of(rows):
        arms = arms_of(rows, size)
        streams = sorted(p for kind, p in arms if kind == "parscale")
        top, one = max(streams), arms.get(("parscale", 1))
        wanted = [
            *((f"P={p} vs P=1", arms[("parscale", p)], one) for p in streams if p > 1),
            *(
                (f"P={p} vs dense matched to its parameters", arms[("parscale", p)], arms.get(("matched_dense", p)))
                for p in streams
                if p > 1
            ),
            *(
                (f"P={p} vs P=1 + one prefix", arms[("parscale", p)], arms.get(("single_prefix", 1)))
                for p in streams
                if p > 1
            ),
            (
                f"P={top} vs dense at 1 + {PAPER_K} ln {top} = {1 + PAPER_K * math.log(top):.2f}x",
                arms[("parscale", top)],
                arms.get(("paper_k_dense", top)),
            ),
        ]
        out += [(size, c) for label, a, b in wanted if (c := _pair(label, a, b, margin)) is not None]
    return out


# ------------------------------------------------------------------ tables


def _arm_name(kind: str, p: int) -> str:
    return ARM_TEXT[kind].format(p=p, k=PAPER_K)


def runs_table(rows: list[dict]) -> list[str]:
    """One line per (size, arm): its parameters, its loss per seed, the mean and the seed sd."""
    head = "size | arm | backbone N | x size's N | ParScale's own | seeds | val loss per seed | mean | seed sd"
    return table(head, (_run_cells(rows, size, key) for size in sizes_of(rows) for key in arms_of(rows, size)))


def _run_cells(rows: list[dict], size: str, key: tuple[str, int]) -> list[str]:
    mine = sorted((r for r in rows if r["size"] == size and (r["kind"], r["streams"]) == key), key=lambda r: r["seed"])
    first, losses = mine[0], [r["val_loss"] for r in mine]
    return [
        size,
        _arm_name(*key),
        f"{first['run_params']:,}",
        f"{first['run_params'] / first['params']:.2f}",
        f"{first['parscale_params']:,} ({first['parscale_params'] / first['run_params']:.0%})",
        str(len(mine)),
        " / ".join(f"{v:.4f}" for v in losses),
        f"{statistics.fmean(losses):.4f}",
        number(statistics.stdev(losses) if len(losses) > 1 else None),
    ]


def comparison_table(found: list[tuple[str, Comparison]]) -> list[str]:
    head = "size | comparison (a - b) | per seed | mean | 95% interval | verdict"
    return table(head, (_comparison_cells(size, c) for size, c in found))


def _comparison_cells(size: str, c: Comparison) -> list[str]:
    interval = f"[{c.low:+.4f}, {c.high:+.4f}]" if c.low is not None and c.high is not None else "n/a (one seed)"
    return [size, c.label, " / ".join(f"{d:+.4f}" for d in c.diffs), f"{c.mean:+.4f}", interval, f"**{c.verdict}**"]


def _stream_table(rows: list[dict]) -> list[str]:
    """Means over seeds; a diagnostic an older evaluation lacks shows as n/a."""
    head = "size | P | stream spread | weight entropy (ln P) | max mean weight | prefix cosine | diversity gain"
    groups = (
        (size, p, [r for r in rows if r["size"] == size and r["kind"] == "parscale" and r["streams"] == p])
        for size in sizes_of(rows)
        for kind, p in arms_of(rows, size)
        if kind == "parscale" and p > 1
    )
    return table(head, (_stream_cells(size, p, group) for size, p, group in groups))


def _stream_cells(size: str, p: int, group: list[dict]) -> list[str]:
    def mean(key: str, spec: str) -> str:
        values = [r[key] for r in group if r.get(key) is not None]
        return number(sum(values) / len(values) if values else None, spec)

    return [
        size,
        str(p),
        mean("stream_spread", "{:.4f}"),
        f"{mean('weight_entropy', '{:.3f}')} ({math.log(p):.3f})",
        mean("max_mean_weight", "{:.3f}"),
        mean("prefix_cosine", "{:.3f}"),
        mean("diversity_gain", "{:+.4f}"),
    ]


# ------------------------------------------------------------------ the fit


def fit_lines(fits: dict | None, sizes: int, top: int) -> list[str]:
    """The fit's section body: the estimates, k's interval or "not identified", the bound flagged,
    which parameters the sizes identify; or why there is no fit."""
    if fits is None:
        return [
            f"Not fitted: {sizes} size(s), and the law needs at least 3. The paired comparisons above are this "
            "experiment's result."
        ]
    free, paper = fits["free"], fits["paper_k"]
    interval, identified = fits["k_interval"], fits["identified"]
    lines = table(
        ["", "free k", f"k fixed at {PAPER_K}"],
        ([k, f"{getattr(free, k):.4g}", f"{getattr(paper, k):.4g}"] for k in ("E", "A", "alpha", "k", "huber")),
    )
    lines += [
        "",
        f"- k = {free.k:.3f}"
        + (" -- **at the bound** (1 + k ln P ~ 0): a bound, not an estimate" if free.k_at_bound else ""),
    ]
    lines.append(f"- {interval.note}")
    lines.append(
        "- Identified by these sizes: "
        + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in identified.items())
    )
    if interval.identified and not free.k_at_bound:
        lines.append(
            f"- P={top} is worth {_worth(free.k, top)} its backbone ({_worth(interval.low, top)} to {_worth(interval.high, top)}); the paper's k: {_worth(PAPER_K, top)}."
        )
    return lines


def _worth(k: float | None, p: int) -> str:
    return "n/a" if k is None else f"{1 + k * math.log(p):.2f}x"


# ------------------------------------------------------------------ figures


def plot(rows: list[dict], found: list[tuple[str, Comparison]], fit: LawFit | None, path: Path) -> Path:
    """Left: loss against P per size (each seed a dot, the mean a line, the fitted law dashed).
    Right: each paired difference with its 95% interval, the margin -d dotted."""
    fig, (by_p, diffs) = two_panels()
    for size in sizes_of(rows):
        arms = arms_of(rows, size)
        streams = sorted(p for kind, p in arms if kind == "parscale")
        means = [statistics.fmean(arms[("parscale", p)].values()) for p in streams]
        (line,) = by_p.plot(streams, means, "o-", label=size)
        for p in streams:
            seeds = list(arms[("parscale", p)].values())
            by_p.plot([p] * len(seeds), seeds, ".", color=line.get_color(), alpha=0.5)
        if fit is not None:
            n = next(r["params"] for r in rows if r["size"] == size)
            grid = [1 + i * (max(streams) - 1) / 60 for i in range(61)]
            by_p.plot(grid, [fit.predict(n, p) for p in grid], "--", color=line.get_color(), linewidth=1)
    by_p.set(xscale="log", xlabel="parallel streams P", ylabel="validation loss", title="loss vs P per size")
    ticks = sorted({r["streams"] for r in rows if r["kind"] == "parscale"})
    by_p.set_xticks(ticks, [str(p) for p in ticks])
    by_p.minorticks_off()
    _forest(diffs, found)
    return save(fig, (by_p, diffs), path)


def _forest(ax, found: list[tuple[str, Comparison]]) -> None:
    labels = [f"{size}: {c.label}" for size, c in found]
    for y, (_, c) in enumerate(found):
        ax.plot(c.diffs, [y] * len(c.diffs), ".", color="grey", alpha=0.6)
        if c.low is not None and c.high is not None:
            ax.plot([c.low, c.high], [y, y], "-", color="C0")
        ax.plot([c.mean], [y], "o", color="C0", label="mean, 95% interval" if y == 0 else None)
    ax.axvline(0, color="black", linewidth=0.8)
    if found:
        ax.axvline(-found[0][1].margin, color="black", linestyle=":", linewidth=0.8, label="-d")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()  # the report's order, top down
    ax.set(xlabel="paired difference a - b (nats; < 0: a better)", title="comparisons over seeds")


def stream_curves(exp) -> dict[str, list[dict]]:
    """Per P > 1 run of the largest size (seed 0): its evaluation records in token order."""
    size = list(exp.bases)[-1]
    out = {}
    for run in exp.runs:
        if run.size == size and run.kind == "parscale" and run.streams > 1 and run.seed == 0:
            path = RunPaths.of(run.loaded.config).metrics
            records = read_records(path) if path.exists() else []
            out[f"P={run.streams}"] = [r for r in records if r.get("kind") == "eval" and "stream_spread" in r]
    return out


def plot_streams(curves: dict[str, list[dict]], path: Path) -> Path:
    fig, (spread, gain) = two_panels()
    for name, records in curves.items():
        tokens = [r["tokens_seen"] for r in records]
        spread.plot(tokens, [r["stream_spread"] for r in records], "o-", label=name)
        if all("diversity_gain" in r for r in records):
            gain.plot(tokens, [r["diversity_gain"] for r in records], "o-", label=name)
    spread.set(xlabel="tokens", ylabel="stream spread", title="how far apart the streams are")
    gain.set(xlabel="tokens", ylabel="nats", title="diversity gain: loss with the mean prefix - real loss")
    return save(fig, (spread, gain), path)


# ------------------------------------------------------------------ the report


def setup_text(exp) -> str:
    cfg, sc = exp.cfg, exp.cfg.scaling
    sch = cfg.schedule
    budget = (
        f"the same {sc.tokens:,} tokens (every size, every arm)"
        if sc.tokens is not None
        else f"{sc.tokens_per_param:g} tokens per backbone non-embedding parameter of its size"
    )
    depths = sorted({b.config.model.num_layers for b in exp.bases.values()})
    axis = f"width at {depths[0]} layers" if sc.axis == "width" else f"depth ({', '.join(map(str, depths))} layers)"
    return config_line(exp.path, exp.overrides) + (
        f". The sizes vary {axis}. Every run trains from initialisation on {budget}, with one schedule: warmup "
        f"{sch.warmup_tokens:,} tokens, {sch.decay_style} decay over {sch.decay_fraction:.0%} of the steps to "
        f"{sch.min_lr_ratio:g} x the peak LR {cfg.optimizer.lr:g}. {sc.seeds} seed(s) of every arm: seed i is "
        f"run.seed + i for every arm, which fixes the backbone's initialisation and the data order (ParScale's "
        f"prefixes and aggregator draw from their own stream). Validation on the same {cfg.eval.max_batches} "
        f"batches for every run of a size. N is the backbone's non-embedding parameters; ParScale's own "
        f"(prefixes + aggregator) are listed beside each run and are not in N. Measured on: {hardware()}."
    )


def _streams_section(exp, rows: list[dict]) -> list[str]:
    curves = stream_curves(exp)
    figure = any(curves.values())
    if figure:
        plot_streams(curves, exp.report_dir / "streams.png")
    return section(
        "The streams",
        SPREAD_TEXT,
        _stream_table(rows),
        f"Over training, size {list(exp.bases)[-1]} (every evaluation, `eval.interval_steps`):" if figure else None,
        "![stream spread and diversity gain against tokens](streams.png)" if figure else None,
    )


def write_report(exp, console) -> Path:
    out, margin = exp.report_dir, exp.cfg.scaling.margin
    rows = exp.results()
    fits = exp.fits(rows)
    found = comparisons(rows, margin)
    plot(rows, found, fits["free"] if fits else None, out / "scaling.png")
    lines = [
        *section(f"{exp.cfg.run.name}: the parallel scaling law, trained from scratch", setup_text(exp), level=1),
        *section("Runs", CONTROL_TEXT, runs_table(rows)),
        *section(
            "Paired comparisons",
            verdict_rule(margin),
            comparison_table(found),
            "![loss vs P, and the paired differences](scaling.png)",
        ),
        *_streams_section(exp, rows),
        *section(
            "Fitted law: L = E + (A / (N (k ln P + 1)))^alpha",
            f"Huber (delta {exp.cfg.scaling.huber_delta:g}) on log L of the ParScale runs' seed means, N the "
            "backbone's non-embedding parameters, k free.",
            fit_lines(fits, len(exp.bases), max(exp.streams)),
        ),
    ]
    write_json(out / "results.json", results_json(rows, found, fits, margin))
    return write_markdown(out / "scaling.md", lines)


def results_json(rows: list[dict], found: list[tuple[str, Comparison]], fits: dict | None, margin: float) -> dict:
    return {
        "mode": "from_scratch",
        "rows": rows,
        "margin": margin,
        "comparisons": [{"size": size, **c.as_dict()} for size, c in found],
        "fits": None
        if fits is None
        else {
            "free": fits["free"].as_dict(),
            "paper_k": fits["paper_k"].as_dict(),
            "k_interval": fits["k_interval"].as_dict(),
            "identified": fits["identified"],
        },
        "hardware": hardware(),
    }
