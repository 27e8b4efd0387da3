"""``parscale scaling`` in from-scratch mode (the paper's Section 3 setup): for each model size,
every P is trained from initialisation on the same tokens, in the same data order, with the same
schedule; ``scaling.seeds`` seeds at P = 1 and at the largest P; for each P > 1 a dense control
widened to the ParScale model's non-embedding parameters (prefixes and aggregator included) on
the same tokens; and P = 1 with one learned prefix (``parscale.single_prefix``), so that prefix
tuning cannot pass for P-scaling. All runs of a size are evaluated on the same validation batches. The budget is
``scaling.tokens_per_param`` tokens per non-embedding parameter of the size.

Layout: ``run.output_dir/<size>/p<P>-seed<i>/``, ``.../dense-matched-p<P>/``, ``.../p1-prefix/``, one ``eval.json``
per size. Finished runs are skipped on a rerun; an interrupted one resumes from its checkpoints."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from data_prep.prepare import is_complete, prepare

from ..checkpoint.portable import read_config
from ..config import LoadedConfig, RunPaths
from ..distributed.launcher import processes_per_job
from ..mainjob.stages import is_trained, train_stage
from ..model.counting import parameter_counts
from ..training.evaluation import evaluate_portable
from ..utils.fs import atomic_write_text
from .from_scratch_report import write_report
from .inference_cost import dense_equivalent, non_embedding
from .law import PAPER_K, LawFit, Point, fit_law

#: the stream diagnostics of an evaluation that each result row carries
STREAM_KEYS = ("stream_spread", "weight_entropy", "max_mean_weight", "prefix_cosine", "diversity_gain")


@dataclass(frozen=True)
class Run:
    size: str
    name: str  # folder under the size
    kind: str  # "parscale" (P = 1 included), "matched_dense" or "single_prefix"
    streams: int  # P; for a matched dense control, the P it matches
    seed: int  # index, 0 .. seeds - 1
    loaded: LoadedConfig

    @property
    def portable(self) -> Path:
        return RunPaths.of(self.loaded.config).portable

    @property
    def fit_params(self) -> int:
        """Non-embedding parameters as the fit counts them: ParScale's own included."""
        cfg = self.loaded.config
        counts = parameter_counts(cfg.model, cfg.parscale, 1)
        return counts.non_embedding + counts.parscale


class FromScratchExperiment:
    def __init__(self, loaded: LoadedConfig, dry_run: bool = False):
        loaded.require("model", "train", "scaling", by="scaling")
        self.loaded, self.cfg, self.dry_run = loaded, loaded.config, dry_run
        self.path, self.overrides = loaded.files[0], list(loaded.overrides)  # as given: for the report
        sc = self.cfg.scaling
        self.root = Path(self.cfg.run.output_dir)
        self.report_dir = self.root / "report"
        self.streams = sc.streams
        self.nproc = processes_per_job(self.cfg.parallel)
        self.bases: dict[str, LoadedConfig] = {}  # per size: its shape at P = 1 (also the evaluation config)
        self.runs: list[Run] = []
        top = max(self.streams)
        for size in sc.sizes:
            n = non_embedding(self.cfg.model.model_copy(update=size.model_overrides()), 1)
            tokens = math.ceil(sc.tokens_per_param * n)
            sets = {
                "run.output_dir": str(self.root / size.name),
                "train.init_from": None,
                "train.skip_tokens": 0,
                "train.tokens": tokens,
                **{f"model.{k}": v for k, v in size.model_overrides().items()},
            }
            base = self.bases[size.name] = self._size(size.name, sets | {"parscale.streams": 1})
            for p in self.streams:
                for i in range(sc.seeds if p in (1, top) else 1):
                    name = f"p{p}-seed{i}"
                    self.runs.append(
                        Run(
                            size.name,
                            name,
                            "parscale",
                            p,
                            i,
                            self._derive(sets, size.name, name, i, {"parscale.streams": p}),
                        )
                    )
                if p > 1 and sc.matched_dense:
                    self.runs.append(self._matched_dense(sets, size.name, base, p))
            if sc.prefix_control:
                self.runs.append(
                    Run(
                        size.name,
                        "p1-prefix",
                        "single_prefix",
                        1,
                        0,
                        self._derive(
                            sets, size.name, "p1-prefix", 0, {"parscale.streams": 1, "parscale.single_prefix": True}
                        ),
                    )
                )

    def _size(self, size: str, updates: dict) -> LoadedConfig:
        return self.loaded.derive(f"scaling.sizes: {size}", updates)

    def _derive(self, sets: dict, size: str, name: str, seed: int, extra: dict) -> LoadedConfig:
        run = {
            "run.output_dir": str(self.root / size / name),
            "run.name": f"{self.cfg.run.name}-{size}-{name}",
            "run.seed": self.cfg.run.seed + seed,
        }
        return self._size(size, sets | run | extra)

    def _matched_dense(self, sets: dict, size: str, base: LoadedConfig, p: int) -> Run:
        model = base.config.model
        counts = parameter_counts(model, base.config.parscale.model_copy(update={"streams": p}), 1)
        # FFN in steps of 8 (any TP up to 8 divides it): close enough at the smallest sizes too
        eq = dense_equivalent(model, 1, (counts.non_embedding + counts.parscale) / counts.non_embedding, step=8)
        shape = {
            f"model.{k}": getattr(eq, k)
            for k in ("hidden_size", "ffn_hidden_size", "num_attention_heads", "num_kv_heads", "head_dim")
        }
        name = f"dense-matched-p{p}"
        return Run(
            size, name, "matched_dense", p, 0, self._derive(sets, size, name, 0, {"parscale.streams": 1, **shape})
        )

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
        console.rule("scaling law fit, report")
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
        rows = []
        evals = {size: json.loads(self._eval_path(size).read_text()) for size in self.bases}
        for run in self.runs:
            result = evals[run.size][run.name]
            rows.append(
                {
                    "size": run.size,
                    "run": run.name,
                    "kind": run.kind,
                    "streams": run.streams,
                    "seed": run.seed,
                    "params": non_embedding(self.bases[run.size].config.model, 1),
                    "fit_params": run.fit_params,
                    "tokens_seen": result["tokens_seen"],
                    "val_loss": result["val_loss"],
                    **{k: result.get(k) for k in STREAM_KEYS},
                }
            )
        return rows

    def fits(self, rows: list[dict]) -> dict:
        """The law on the seed means (N counts ParScale's own parameters), free and with the paper's
        k, and k's spread over refits on seeds drawn with replacement."""
        delta = self.cfg.scaling.huber_delta
        groups: dict[tuple[str, int], list[dict]] = {}
        for r in rows:
            if r["kind"] == "parscale":
                groups.setdefault((r["size"], r["streams"]), []).append(r)

        def points(pick) -> list[Point]:
            return [Point(g[0]["fit_params"], p, sum(pick(g)) / len(g)) for (_, p), g in groups.items()]

        free = fit_law(points(lambda g: [r["val_loss"] for r in g]), delta)
        rng = random.Random(0)
        ks = [
            fit_law(points(lambda g: [rng.choice(g)["val_loss"] for _ in g]), delta).k
            for _ in range(self.cfg.scaling.bootstrap)
        ]
        return {
            "free": free,
            "paper_k": fit_law(points(lambda g: [r["val_loss"] for r in g]), delta, fixed_k=PAPER_K),
            "bootstrap_k": sorted(ks),
        }


__all__ = ["FromScratchExperiment", "LawFit", "Run"]
