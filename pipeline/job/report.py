"""The main job's report: ``report/report.md`` with ``report/loss.png`` (training and validation
loss of both stages on one token axis, and the stage-2 comparison of ParScale against the dense
control at equal stage-2 tokens), built from each stage's ``metrics.jsonl`` and ``eval.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ..model.counting import parameter_counts
from ..training.metrics import read_records
from ..utils.fs import atomic_write_text
from ..utils.plots import save, two_panels
from .layout import stage2_key

LABELS = {"stage1": "stage 1 (dense)", "dense": "stage 2 dense control", "prefix1": "stage 2 P=1 + one prefix"}


def config_line(path: str, overrides: list[str]) -> str:
    """'Config: `path` with `--set ...`': how a report's numbers were made."""
    return f"Config: `{path}`" + (f" with `--set {' '.join(overrides)}`" if overrides else "")


def label(key: str) -> str:
    """'stage2-p4' -> 'stage 2 (ParScale P=4)'."""
    return LABELS.get(key) or f"stage 2 (ParScale P={key.rpartition('-p')[2]})"


def read_metrics(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(tokens, train loss) and (tokens, val loss) points of one training run."""
    train, val, per_step = [], [], None
    if not (run_dir / "metrics.jsonl").is_file():  # not trained here (stage 2 from a given checkpoint)
        return train, val
    for record in read_records(run_dir / "metrics.jsonl"):
        if "loss" in record and "tokens_seen" in record:
            train.append((record["tokens_seen"], record["loss"]))
            per_step = record["tokens_seen"] / record["step"]
        elif "val_loss" in record and per_step:
            val.append((int(record["step"] * per_step), record["val_loss"]))
    return train, val


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(curves: dict[str, tuple[list, list]], offset: int, path: Path) -> Path:
    fig, (whole, zoom) = two_panels()
    for key, (train, val) in curves.items():
        shift = 0 if key == "stage1" else offset
        xs, ys = [t + shift for t, _ in train], [v for _, v in train]
        (line,) = whole.plot(xs, _smooth(ys, 10), label=f"{label(key)} train", linewidth=1.2)
        whole.plot(
            [t + shift for t, _ in val],
            [v for _, v in val],
            "o",
            color=line.get_color(),
            label=f"{label(key)} val",
            markersize=4,
        )
        if key != "stage1":
            zoom.plot([t for t, _ in train], _smooth(ys, 10), color=line.get_color(), label=f"{label(key)} train")
            zoom.plot([t for t, _ in val], [v for _, v in val], "o-", color=line.get_color(), label=f"{label(key)} val")
    whole.axvline(offset, color="grey", linestyle=":", linewidth=1)
    whole.set(xlabel="tokens", ylabel="loss", title="both stages (train: moving average of 10 steps)")
    zoom.set(xlabel="stage-2 tokens", ylabel="loss", title="stage 2: ParScale vs dense at equal tokens")
    return save(fig, (whole, zoom), path)


def write_report(job) -> Path:
    layout, out = job.layout, job.layout.report
    runs = {key: Path(loaded.config.run.output_dir) for key, loaded in job.configs.items()}
    curves = {key: read_metrics(path) for key, path in runs.items()}
    stage1_tokens = curves["stage1"][0][-1][0] if curves["stage1"][0] else 0
    plot(curves, stage1_tokens, out / "loss.png")
    evals = json.loads(layout.eval.read_text())
    finals = job._finals()
    cfg = job.cfg
    streams = ", ".join(f"P={p}" for p in job.streams)
    lines = [
        f"# {cfg.run.name}: dense -> ParScale {streams}",
        "",
        config_line(job.path, job.overrides),
        "",
        "| run | P | parameters (ParScale extra) | tokens | last train loss | val loss | val ppl |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, result in evals.items():
        ps = job.configs[key].config.parscale
        counts = parameter_counts(cfg.model, ps, job.configs[key].config.model.vocab_size or _vocab(finals[key]))
        train = curves[key][0]
        last = f"{train[-1][1]:.4f}" if train else "—"  # stage 1 given as a checkpoint: not trained here
        lines.append(
            f"| {label(key)} | {ps.streams} | {counts.total:,} ({100 * counts.parscale_fraction:.1f}%) | "
            f"{result['tokens_seen'] or 0:,} | {last} | {result['val_loss']:.4f} | {result['val_ppl']:.2f} |"
        )
    if "dense" in evals:
        lines.append("")
        for p in job.streams:
            gain = evals["dense"]["val_loss"] - evals[stage2_key(p)]["val_loss"]
            lines.append(
                f"At equal stage-2 tokens ({job.stage2.tokens:,}), ParScale P={p} ends "
                f"{'below' if gain > 0 else 'above'} the dense control by {abs(gain):.4f} nats of validation "
                "loss (same validation batches for every run)."
            )
    if "prefix1" in evals:
        for p in job.streams:
            gain = evals["prefix1"]["val_loss"] - evals[stage2_key(p)]["val_loss"]
            lines.append(
                f"Against one learned prefix (P=1 + prefix, same tokens), ParScale P={p} ends "
                f"{'below' if gain > 0 else 'above'} it by {abs(gain):.4f} nats: what the P streams add "
                "beyond prefix tuning."
            )
    if "dense" in evals or "prefix1" in evals:
        lines += [
            "",
            "One run's difference at this scale is within seed noise; `parscale scaling` (several sizes, "
            "P = 1, 2, 4, 8, a fitted scaling law) is the place for claims.",
        ]
    lines += [
        "",
        "![training and validation loss](loss.png)",
        "",
        "## Stages",
        "",
        "| stage | status | wall time (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t['status']} | {t['seconds']:.1f} |" for name, t in job.timings.items()]
    outputs = [
        *([job.start] if job.start else [layout.stage1, layout.consolidated]),
        *(layout.init(p) for p in job.streams),
        *(layout.stage2(p) for p in job.streams),
        layout.dense,
        layout.eval,
    ]
    lines += ["", "Outputs: " + ", ".join(f"`{p}`" for p in outputs), ""]
    return atomic_write_text(out / "report.md", "\n".join(lines))


def _vocab(portable: Path) -> int:
    return json.loads((portable / "config.json").read_text())["vocab_size"]
