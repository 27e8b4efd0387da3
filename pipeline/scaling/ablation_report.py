"""The stage-2 ablation's report (``ablation/report/ablation.md`` + ``results.json``): per variant,
the validation loss over seeds against the baseline and the two controls, and the stream
diagnostics that say whether the streams became different."""

from __future__ import annotations

import math
from pathlib import Path

from ..config.ablation import BASELINE, CONTROLS
from ..utils.hardware import hardware
from ..utils.report_format import config_line, number, section, write_json, write_markdown
from ..utils.report_format import table as markdown_table

#: the diagnostics averaged over seeds, in table order: (key, column title, format)
DIAGNOSTICS = (
    ("diversity_gain", "diversity gain", "{:+.4f}"),
    ("stream_spread", "stream spread", "{:.4f}"),
    ("weight_entropy", "weight entropy / ln P", "{:.3f}"),
    ("max_mean_weight", "max mean weight", "{:.3f}"),
    ("prefix_cosine", "prefix cosine", "{:.3f}"),
    ("update_cosine", "update cosine", "{:.3f}"),
)

DIAGNOSTICS_TEXT = (
    "Diagnostics (means over seeds): diversity gain = val loss with every stream given the streams' "
    "mean prefix minus the real loss (0: single-prefix tuning); stream spread = RMS distance of the "
    "streams' final states from their mean, relative to it; weight entropy / ln P (1: uniform merge); "
    "prefix cosine = mean pairwise cosine of the streams' prefixes; update cosine = the same for their "
    "change from the converted init (1: every stream moved the same way)."
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(variants: list[tuple[str, int, tuple[str, ...]]], results: dict[str, dict], streams: int) -> list[dict]:
    """One row per variant name: seed losses, their mean and spread (max - min), the diagnostics'
    means, and the mean's difference to the baseline's and to each control."""
    rows: dict[str, dict] = {}
    for name, seed, sets in variants:
        row = rows.setdefault(name, {"variant": name, "set": list(sets), "losses": [], "diag": {}})
        result = results[f"{name}-seed{seed}"]
        row["losses"].append(result["val_loss"])
        for key, _, _ in DIAGNOSTICS:
            if result.get(key) is not None:
                value = result[key] / math.log(streams) if key == "weight_entropy" else result[key]
                row["diag"].setdefault(key, []).append(value)
    for row in rows.values():
        row["val_loss"] = _mean(row["losses"])
        row["seed_spread"] = max(row["losses"]) - min(row["losses"]) if len(row["losses"]) > 1 else None
        row["diag"] = {k: _mean(v) for k, v in row["diag"].items()}
    base = rows[BASELINE]["val_loss"]
    for row in rows.values():
        row["vs_baseline"] = row["val_loss"] - base
        for control in CONTROLS:
            if control in results:
                row[f"vs_{control}"] = row["val_loss"] - results[control]["val_loss"]
    return list(rows.values())


def table(rows: list[dict]) -> list[str]:
    controls = [c for c in CONTROLS if f"vs_{c}" in rows[0]]
    head = [
        "variant",
        "set",
        "val loss (seeds)",
        "seed spread",
        "vs baseline",
        *(f"vs {CONTROLS[c]}" for c in controls),
        *(title for _, title, _ in DIAGNOSTICS),
    ]
    return markdown_table(head, (_cells(r, controls) for r in rows))


def _cells(row: dict, controls: list[str]) -> list[str]:
    return [
        row["variant"],
        ", ".join(f"`{s}`" for s in row["set"]) or "(the config as is)",
        f"{row['val_loss']:.4f} ({', '.join(f'{x:.4f}' for x in row['losses'])})",
        number(row["seed_spread"], missing="-"),
        f"{row['vs_baseline']:+.4f}",
        *(f"{row[f'vs_{c}']:+.4f}" for c in controls),
        *(number(row["diag"].get(k), spec, missing="-") for k, _, spec in DIAGNOSTICS),
    ]


def findings(rows: list[dict]) -> list[str]:
    """Each variant against the baseline, judged against the larger of the two seed spreads (the
    same seeds, the same tokens: a paired difference below it is not a finding), and whether the
    streams became worth more than one shared prefix."""
    base = next(r for r in rows if r["variant"] == BASELINE)
    return [_finding(r, base) for r in rows if r is not base]


def _finding(row: dict, base: dict) -> str:
    noise = max(row["seed_spread"] or 0.0, base["seed_spread"] or 0.0)
    gain = row["diag"].get("diversity_gain")
    verdict = (
        "lower than the baseline beyond"
        if -row["vs_baseline"] > noise
        else "higher than the baseline beyond"
        if row["vs_baseline"] > noise
        else "within"
    )
    streams = (
        f"; diversity gain {gain:+.4f} (baseline {base['diag'].get('diversity_gain', 0.0):+.4f})"
        if gain is not None
        else ""
    )
    return f"- `{row['variant']}`: {row['vs_baseline']:+.4f} nats, {verdict} the seed spread ({noise:.4f}){streams}."


def _setup(ablation) -> str:
    cfg = ablation.cfg
    return config_line(ablation.path, ablation.overrides) + (
        f". Stage 1 dense on {cfg.train.tokens:,} tokens, shared; every variant's stage 2 on "
        f"{cfg.stage2.tokens:,} tokens from it, {cfg.ablation.seeds} seeds each (seed i: the prefixes' and "
        "the aggregator's init from run.seed + i; the same data order for every run, the controls' "
        "included, so differences are paired); validation on the same "
        f"{cfg.eval.max_batches} batches for every model. Measured on: {hardware()}."
    )


def write_report(ablation, results: dict[str, dict]) -> Path:
    cfg = ablation.cfg
    streams = cfg.stage2.parscale.streams
    rows = summarize([(v.name, v.seed, v.sets) for v in ablation.variants], results, streams)
    controls = ", ".join(f"{CONTROLS[c]} {results[c]['val_loss']:.4f}" for c in CONTROLS if c in results)
    write_json(ablation.report_dir / "results.json", {"rows": rows, "results": results, "hardware": hardware()})
    return write_markdown(
        ablation.report_dir / "ablation.md",
        [
            *section(
                f"{cfg.run.name}: stage-2 ablations at P = {streams}",
                _setup(ablation),
                f"Controls on the same stage-2 tokens: {controls}.",
                DIAGNOSTICS_TEXT,
                table(rows),
                level=1,
            ),
            *section("What the runs say", findings(rows)),
        ],
    )


__all__ = ["DIAGNOSTICS", "findings", "summarize", "table", "write_report"]
