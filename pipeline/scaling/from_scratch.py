"""``parscale scaling`` in from-scratch mode, on the paper's axes (Section 3): the sizes vary width
(hidden, FFN, heads) at one fixed depth (``scaling.axis: width``) and span at least 3x in backbone
non-embedding parameters N; every run of every size trains from initialisation on the same tokens
(``scaling.tokens``, or ``scaling.tokens_per_param`` per size), with the same annealed schedule
(decayed to <= 10% of the peak LR by the last step, warmup <= 10% of the budget; refused otherwise).

For each size and each of ``scaling.seeds`` seeds: every P; a dense model widened to a ParScale
model's backbone + ParScale parameters (``matched_dense``: is the gain just parameters?); a dense
model at (1 + k ln P_max) x the backbone with the paper's k (``paper_k_dense``: what the paper says
P_max is worth); P = 1 with one learned prefix (``prefix_control``). Seed i is ``run.seed + i`` for
all of them: the backbone's initialisation (ParScale's tensors draw from a stream of their own, see
``pipeline/model/draws.py``) and the data order are the same, so each comparison is a paired
difference over seeds. All runs of a size are evaluated on the same validation batches. The law is
fitted on N = the backbone's non-embedding parameters with three sizes or more; one size is the
decisive mode (the comparisons alone).

Layout: ``run.output_dir/<size>/<arm>-seed<i>/`` (arms: ``p<P>``, ``dense-matched-p<P>``,
``dense-k-p<P>``, ``p1-prefix``), one ``eval.json`` per size. Finished runs are skipped on a rerun;
an interrupted one resumes from its checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from data_prep.prepare import is_complete, prepare

from ..checkpoint.portable import read_config
from ..config import LoadedConfig, RunPaths
from ..config.scaling import ScalingConfig
from ..distributed.launcher import processes_per_job
from ..mainjob.stages import is_trained, train_stage
from ..model.counting import ParamCounts, parameter_counts
from ..training.evaluation import evaluate_portable
from ..training.schedule import WSD
from ..utils.fs import atomic_write_text
from .from_scratch_report import write_report
from .inference_cost import dense_equivalent, non_embedding
from .law import PAPER_K, Point, fit_law, identified_parameters, profile_k

#: the stream diagnostics of an evaluation that each result row carries
STREAM_KEYS = ("stream_spread", "weight_entropy", "max_mean_weight", "prefix_cosine", "diversity_gain")
MIN_SPAN = 3.0  # the sizes' largest backbone N over the smallest
MAX_FINAL_LR = 0.1  # the schedule's LR at the last step, as a fraction of the peak
MAX_WARMUP = 0.1  # warmup tokens, as a fraction of the budget
MIN_FIT_SIZES = 3
SHAPE_KEYS = ("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads", "head_dim")


@dataclass(frozen=True)
class Run:
    size: str
    name: str  # folder under the size
    kind: str  # "parscale" (P = 1 included), "matched_dense", "paper_k_dense" or "single_prefix"
    streams: int  # P; for a dense control, the P it stands for
    seed: int  # index, 0 .. seeds - 1
    loaded: LoadedConfig

    @property
    def portable(self) -> Path:
        return RunPaths.of(self.loaded.config).portable

    @property
    def counts(self) -> ParamCounts:
        """This run's parameters: ``non_embedding`` its backbone's, ``parscale`` prefixes + aggregator."""
        cfg = self.loaded.config
        return parameter_counts(cfg.model, cfg.parscale, 1)


def size_params(loaded: LoadedConfig, overrides: dict) -> int:
    """Backbone non-embedding parameters of the job's model with a size's overrides."""
    return non_embedding(loaded.config.model.model_copy(update=overrides), 1)


def check_sizes(loaded: LoadedConfig) -> None:
    """Width at a fixed depth (unless ``scaling.axis: depth``) and, with two sizes or more, a span of
    at least 3x in backbone N: refused otherwise, naming ``scaling.sizes``."""
    sc, model = loaded.config.scaling, loaded.config.model
    depths = {s.name: s.num_layers or model.num_layers for s in sc.sizes}
    if sc.axis == "width" and len(set(depths.values())) > 1:
        listed = ", ".join(f"{name}: {d}" for name, d in depths.items())
        raise loaded.error(
            "scaling.sizes",
            f"from_scratch sizes vary width at one depth (scaling.axis: width, the paper's axis), but their "
            f"num_layers differ ({listed}): give every size the same num_layers, or set scaling.axis: depth",
        )
    if len(sc.sizes) < 2:
        return
    params = {s.name: size_params(loaded, s.model_overrides()) for s in sc.sizes}
    span = max(params.values()) / min(params.values())
    if span < MIN_SPAN:
        listed = ", ".join(f"{name}: {n:,}" for name, n in params.items())
        raise loaded.error(
            "scaling.sizes",
            f"the sizes span {span:.2f}x in backbone non-embedding parameters ({listed}); the law needs at least "
            f"{MIN_SPAN:g}x between the smallest and the largest",
        )


def size_tokens(sc: ScalingConfig, params: int) -> int:
    """A size's training tokens: scaling.tokens, or scaling.tokens_per_param x its backbone N."""
    if sc.tokens is not None:
        return sc.tokens
    assert sc.tokens_per_param is not None  # the config requires one of the two
    return math.ceil(sc.tokens_per_param * params)


def check_schedule(loaded: LoadedConfig, tokens: int) -> None:
    """The annealed schedule every arm shares: decayed to <= 10% of the peak LR by the last step,
    warmup <= 10% of the budget; refused otherwise, naming the ``schedule`` key to change."""
    cfg = loaded.config
    sch, step_tokens = cfg.schedule, cfg.parallel.global_batch_size * cfg.packing.seq_len
    steps = cfg.train.model_copy(update={"tokens": tokens}).steps(step_tokens)
    wsd = WSD.build(sch, cfg.optimizer.lr, steps, step_tokens)
    final = wsd(steps - 1) / cfg.optimizer.lr
    if final > MAX_FINAL_LR + 1e-12:
        key = (
            "schedule.min_lr_ratio"
            if wsd.decay_steps and sch.min_lr_ratio > MAX_FINAL_LR
            else "schedule.decay_fraction"
        )
        raise loaded.error(
            key,
            f"the LR at the last of {steps} steps is {final:.0%} of the peak (decay_fraction {sch.decay_fraction:g}, "
            f"min_lr_ratio {sch.min_lr_ratio:g}); from_scratch runs are compared annealed: decay to at most "
            f"{MAX_FINAL_LR:.0%} (e.g. decay_fraction 1, min_lr_ratio 0.1)",
        )
    if sch.warmup_tokens > MAX_WARMUP * tokens:
        raise loaded.error(
            "schedule.warmup_tokens",
            f"{sch.warmup_tokens:,} is {sch.warmup_tokens / tokens:.0%} of the {tokens:,}-token budget; at most "
            f"{MAX_WARMUP:.0%} (a few % is usual)",
        )


class FromScratchExperiment:
    def __init__(self, loaded: LoadedConfig, dry_run: bool = False):
        loaded.require("model", "train", "scaling", by="scaling")
        self.loaded, self.cfg, self.dry_run = loaded, loaded.config, dry_run
        self.path, self.overrides = loaded.files[0], list(loaded.overrides)  # as given: for the report
        sc = self.cfg.scaling
        check_sizes(loaded)
        self.root = Path(self.cfg.run.output_dir)
        self.report_dir = self.root / "report"
        self.streams = sc.streams
        self.nproc = processes_per_job(self.cfg.parallel)
        self.bases: dict[str, LoadedConfig] = {}  # per size: its shape at P = 1 (also the evaluation config)
        self.tokens: dict[str, int] = {}
        self.runs: list[Run] = []
        for size in sc.sizes:
            tokens = self.tokens[size.name] = size_tokens(sc, size_params(loaded, size.model_overrides()))
            check_schedule(loaded, tokens)
            sets = {
                "run.output_dir": str(self.root / size.name),
                "train.init_from": None,
                "train.skip_tokens": 0,
                "train.tokens": tokens,
                **{f"model.{k}": v for k, v in size.model_overrides().items()},
            }
            self.bases[size.name] = self._size(size.name, sets | {"parscale.streams": 1})
            self.runs += self._size_runs(size.name, sets)

    # ------------------------------------------------------------------ the plan

    def arms(self, size: str) -> list[tuple[str, str, int, dict]]:
        """(name, kind, P, config updates) of each arm of a size, in training order."""
        sc, top = self.cfg.scaling, max(self.streams)
        arms = [(f"p{p}", "parscale", p, {"parscale.streams": p}) for p in self.streams]
        if sc.matched_dense:
            for p in sc.matched_dense_streams or [p for p in self.streams if p > 1]:
                arms.append(
                    (f"dense-matched-p{p}", "matched_dense", p, self._dense(size, self._matched_factor(size, p)))
                )
        if sc.paper_k_dense:
            arms.append((f"dense-k-p{top}", "paper_k_dense", top, self._dense(size, 1 + PAPER_K * math.log(top))))
        if sc.prefix_control:
            arms.append(("p1-prefix", "single_prefix", 1, {"parscale.streams": 1, "parscale.single_prefix": True}))
        return arms

    def _size_runs(self, size: str, sets: dict) -> list[Run]:
        """Seed-major: every arm of seed 0 first (a first paired set early)."""
        arms = self.arms(size)
        return [
            Run(size, f"{name}-seed{i}", kind, p, i, self._derive(sets, size, f"{name}-seed{i}", i, updates))
            for i in range(self.cfg.scaling.seeds)
            for name, kind, p, updates in arms
        ]

    def _size(self, size: str, updates: dict) -> LoadedConfig:
        return self.loaded.derive(f"scaling.sizes: {size}", updates)

    def _derive(self, sets: dict, size: str, name: str, seed: int, extra: dict) -> LoadedConfig:
        run = {
            "run.output_dir": str(self.root / size / name),
            "run.name": f"{self.cfg.run.name}-{size}-{name}",
            "run.seed": self.cfg.run.seed + seed,
        }
        return self._size(size, sets | run | extra)

    def _matched_factor(self, size: str, p: int) -> float:
        """(backbone + ParScale's own parameters at P) / backbone."""
        base = self.bases[size].config
        counts = parameter_counts(base.model, base.parscale.model_copy(update={"streams": p}), 1)
        return (counts.non_embedding + counts.parscale) / counts.non_embedding

    def _dense(self, size: str, factor: float) -> dict:
        """The updates of a dense model of the size's depth and head size, ``factor`` x its backbone N
        (FFN in steps of 8: any TP up to 8 divides it, and close enough at the smallest sizes)."""
        eq = dense_equivalent(self.bases[size].config.model, 1, factor, step=8)
        return {"parscale.streams": 1, **{f"model.{k}": getattr(eq, k) for k in SHAPE_KEYS}}

    # ------------------------------------------------------------------ running

    def run(self, console) -> Path:
        first = next(iter(self.bases.values()))
        if is_complete(first.config):
            console.print("[green]skip[/] data prep: output already there")
        elif not self.dry_run:
            console.rule("data prep")
            prepare(first)
        for run in self.runs:
            label = f"size {run.size}: {run.name}"
            if is_trained(run.loaded):
                console.print(f"[green]skip[/] {label}: trained")
                continue
            console.rule(label)
            train_stage(run.loaded, label, self.nproc, self.dry_run)
        report = self.report_dir / "scaling.md"
        if self.dry_run:
            return report
        for size in self.bases:
            self._evaluate(size, console)
        console.rule("paired comparisons, scaling law fit, report")
        return write_report(self, console)

    def _eval_path(self, size: str) -> Path:
        return self.root / size / "eval.json"

    def _evaluate(self, size: str, console) -> None:
        """Every run of ``size`` on the same validation batches (the size's base config); cached per
        run by the tokens its export saw."""
        path = self._eval_path(size)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        for run in (r for r in self.runs if r.size == size):
            seen = read_config(run.portable).get("tokens_seen")
            if saved.get(run.name, {}).get("tokens_seen") != seen:
                saved[run.name] = evaluate_portable(self.bases[size], str(run.portable))
                console.print(f"{size} {run.name}: val loss {saved[run.name]['val_loss']:.4f}")
        atomic_write_text(path, json.dumps(saved, indent=2))

    # ------------------------------------------------------------------ results

    def results(self) -> list[dict]:
        evals = {size: json.loads(self._eval_path(size).read_text()) for size in self.bases}
        return [self._row(run, evals[run.size][run.name]) for run in self.runs]

    def _row(self, run: Run, result: dict) -> dict:
        """``params``: the size's backbone N (the fit's); ``run_params``: this run's backbone N (a dense
        control's is wider); ``parscale_params``: its prefixes + aggregator."""
        counts = run.counts
        return {
            "size": run.size,
            "run": run.name,
            "kind": run.kind,
            "streams": run.streams,
            "seed": run.seed,
            "params": non_embedding(self.bases[run.size].config.model, 1),
            "run_params": counts.non_embedding,
            "parscale_params": counts.parscale,
            "tokens_seen": result["tokens_seen"],
            "val_loss": result["val_loss"],
            **{k: result.get(k) for k in STREAM_KEYS},
        }

    def fits(self, rows: list[dict]) -> dict | None:
        """The law on the ParScale runs' seed means, N the backbone's non-embedding parameters: free
        (k unbounded, the bound flagged when hit) and with the paper's k, k's profile interval, and
        which of E, A, alpha, k the sizes identify. None below three sizes (the decisive mode)."""
        if len(self.bases) < MIN_FIT_SIZES:
            return None
        points = law_points(rows)
        delta = self.cfg.scaling.huber_delta
        return {
            "free": fit_law(points, delta),
            "paper_k": fit_law(points, delta, fixed_k=PAPER_K),
            "k_interval": profile_k(points, delta),
            "identified": identified_parameters(points, delta),
        }


def law_points(rows: list[dict]) -> list[Point]:
    """One point per (size, P) of the ParScale runs: the backbone's N and the mean loss over seeds."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r["kind"] == "parscale":
            groups.setdefault((r["size"], r["streams"]), []).append(r)
    return [Point(g[0]["params"], p, sum(r["val_loss"] for r in g) / len(g)) for (_, p), g in groups.items()]


__all__ = ["FromScratchExperiment", "Run", "check_schedule", "check_sizes", "law_points"]
