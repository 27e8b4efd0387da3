"""The main job's report: ``report/report.md`` with ``report/loss.png`` (training and validation
loss of both stages on one token axis, and the stage-2 comparison of ParScale against the dense
control at equal stage-2 tokens), built from each stage's ``metrics.jsonl`` and ``eval.json``; with
``eval.tasks``, a table of each final model's downstream metrics."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint.portable import read_config
from ..config.run_paths import RunPaths
from ..downstream.run_tasks import SMOKE_TASKS
from ..model.counting import parameter_counts
from ..training.metrics import read_records
from ..utils.plots import save, two_panels
from ..utils.report_format import config_line, number, section, table, write_markdown
from .folders import stage2_key

LABELS = {"stage1": "stage 1 (dense)", "dense": "stage 2 dense control", "prefix1": "stage 2 P=1 + one prefix"}

#: per control in the job, the sentence that sets ParScale P={p} against it (in this order)
AGAINST = {
    "dense": "At equal stage-2 tokens ({tokens:,}), ParScale P={p} ends {side} the dense control by {gap:.4f} nats "
    "of validation loss (same validation batches for every run).",
    "prefix1": "Against one learned prefix (P=1 + prefix, same tokens), ParScale P={p} ends {side} it by {gap:.4f} "
    "nats: what the P streams add beyond prefix tuning.",
}
CAUTION = (
    "One run's difference at this scale is within seed noise; `parscale scaling` (several sizes, "
    "P = 1, 2, 4, 8, a fitted scaling law) is the place for claims."
)

Points = list[tuple[int, float]]


def label(key: str) -> str:
    """'stage2-p4' -> 'stage 2 (ParScale P=4)'."""
    return LABELS.get(key) or f"stage 2 (ParScale P={key.rpartition('-p')[2]})"


def read_metrics(metrics: Path) -> tuple[Points, Points]:
    """(tokens, train loss) and (tokens, val loss) points of one training run's metrics file."""
    train, val, per_step = [], [], None
    if not metrics.is_file():  # not trained here (stage 2 from a given checkpoint)
        return train, val
    for record in read_records(metrics):
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


def plot(curves: dict[str, tuple[Points, Points]], offset: int, path: Path) -> Path:
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


def _runs_table(job, evals: dict[str, dict], curves: dict[str, tuple[Points, Points]]) -> list[str]:
    finals = job._finals()
    rows = []
    for key, result in evals.items():
        loaded = job.configs[key].config
        vocab = loaded.model.vocab_size or read_config(finals[key])["vocab_size"]
        counts = parameter_counts(job.cfg.model, loaded.parscale, vocab)
        train = curves[key][0]
        rows.append(
            [
                label(key),
                str(loaded.parscale.streams),
                f"{counts.total:,} ({100 * counts.parscale_fraction:.1f}%)",
                f"{result['tokens_seen'] or 0:,}",
                f"{train[-1][1]:.4f}" if train else "—",  # stage 1 given as a checkpoint: not trained here
                f"{result['val_loss']:.4f}",
                f"{result['val_ppl']:.2f}",
            ]
        )
    return table("run | P | parameters (ParScale extra) | tokens | last train loss | val loss | val ppl", rows)


def _comparisons(job, evals: dict[str, dict]) -> list[str]:
    """ParScale against each control it has, at equal stage-2 tokens."""
    lines = []
    for control, sentence in AGAINST.items():
        for p in job.streams if control in evals else []:
            gain = evals[control]["val_loss"] - evals[stage2_key(p)]["val_loss"]
            side = "below" if gain > 0 else "above"
            lines.append(sentence.format(tokens=job.stage2.tokens, p=p, side=side, gap=abs(gain)))
    return lines


#: the project's own tasks (``pipeline/downstream/tasks``), and their group
OWN_TASKS = {*SMOKE_TASKS, "parscale_smoke"}


def _downstream(evals: dict[str, dict]) -> list[str]:
    """The section of the models' downstream metrics (none when eval.json holds none): a row per
    model, a column per task/metric, and what the numbers are."""
    scored = {key: result["downstream"] for key, result in evals.items() if result.get("downstream")}
    if not scored:
        return []
    columns = list(dict.fromkeys(name for d in scored.values() for name in d["metrics"]))
    rows = [[label(key), *(number(d["metrics"].get(c)) for c in columns)] for key, d in scored.items()]
    settings = next(iter(scored.values()))["settings"]
    limit = settings.get("limit")
    shots = settings.get("num_fewshot")
    how = (
        f"lm-evaluation-harness on each final model: tasks {', '.join(f'`{t}`' for t in settings['tasks'])}; "
        f"{'all documents' if limit is None else f'the first {limit} documents'} per task; "
        f"{'each task its own few-shot count' if shots is None else f'{shots}-shot'}."
    )
    if set(settings["tasks"]) <= OWN_TASKS:
        return section(
            "Downstream smoke check",
            "**A smoke check on the project's tiny offline tasks, not a benchmark**: it shows each model loads, "
            "scores choices, rolls perplexity and generates through lm-eval; with models this small and this few "
            "documents, differences between the rows are mostly noise.",
            how,
            table(["model", *columns], rows),
        )
    return section("Downstream tasks", how, table(["model", *columns], rows))


def _outputs(job) -> str:
    folders = job.folders
    outputs = [
        *([job.start] if job.start else [folders.stage1, folders.consolidated]),
        *(folders.init(p) for p in job.streams),
        *(folders.stage2(p) for p in job.streams),
        folders.dense,
        folders.eval,
    ]
    return "Outputs: " + ", ".join(f"`{p}`" for p in outputs)


def write_report(job) -> Path:
    out = job.folders.report
    curves = {key: read_metrics(RunPaths.of(loaded.config).metrics) for key, loaded in job.configs.items()}
    stage1_tokens = curves["stage1"][0][-1][0] if curves["stage1"][0] else 0
    plot(curves, stage1_tokens, out / "loss.png")
    evals = json.loads(job.folders.eval.read_text())
    comparisons = _comparisons(job, evals)
    stages = table(
        "stage | status | wall time (s)",
        ([name, t["status"], f"{t['seconds']:.1f}"] for name, t in job.timings.items()),
    )
    return write_markdown(
        out / "report.md",
        [
            *section(
                f"{job.cfg.run.name}: dense -> ParScale {', '.join(f'P={p}' for p in job.streams)}",
                config_line(job.path, job.overrides),
                _runs_table(job, evals, curves),
                comparisons,
                CAUTION if comparisons else None,
                "![training and validation loss](loss.png)",
                level=1,
            ),
            *_downstream(evals),
            *section("Stages", stages, _outputs(job)),
        ],
    )
