"""``parscale scaling`` in two-stage mode: for each model size, the main job (prep, stage 1 dense, consolidate, then
stage 2 at every P > 1 and the dense model continued for the same tokens as P = 1, evaluation on
the same validation batches), then the scaling-law fit, the inference-cost comparison and a report.
Each size lives in ``run.output_dir/<size>/`` and skips what it already finished.

Stage 2's budget is the same fraction of stage 1 at every size (issue 28, item 9): ``stage2.tokens``
(stage 1 is ``train.tokens`` at every size), or ``scaling.stage2_fraction`` x ``train.tokens``;
``scaling.stage2_tokens_per_param`` still gives each size its own ratio, which the report flags.
At the largest size stage 2 runs ``scaling.stage2_seeds`` times (default 2) at every P: seed i > 0
(``run.output_dir/<size>/stage2-seed<i>/``) starts from the same stage 1, draws the ParScale
tensors from ``run.seed + i`` and reads the stage-2 data i budgets further on in the same data order,
on the same validation batches; the report claims where the P ordering appears only where every P
has two seeds or more."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..checkpoint.portable import CheckpointError, read_config
from ..config import LoadedConfig, RunPaths
from ..mainjob.stages import MainJob, stage2_key
from ..model.counting import parameter_counts
from .budget import stage2_fraction, stage2_seeds
from .inference_cost import compare, non_embedding
from .law import PAPER_K, Point, fit_law, identified_parameters, profile_k
from .report import write_report


class ScalingExperiment:
    def __init__(self, loaded: LoadedConfig, dry_run: bool = False):
        loaded.require("model", "train", "stage2", "scaling", by="scaling")
        self.loaded, self.cfg, self.dry_run = loaded, loaded.config, dry_run
        self.path, self.overrides = loaded.files[0], list(loaded.overrides)  # as given: for the report
        self.root = Path(self.cfg.run.output_dir)
        self.report_dir = self.root / "report"
        self.streams = self.cfg.scaling.streams
        self.jobs: dict[str, MainJob] = {}
        per_param = self.cfg.scaling.stage2_tokens_per_param
        fraction = stage2_fraction(self.cfg.scaling)
        for size in self.cfg.scaling.sizes:
            updates = {
                "run.output_dir": str(self.root / size.name),
                "run.name": f"{self.cfg.run.name}-{size.name}",
                "stage2.dense_baseline": True,
                "stage2.prefix_control": self.cfg.scaling.prefix_control,
                **{f"model.{k}": v for k, v in size.model_overrides().items()},
            }
            if fraction:  # the same fraction of stage 1 at every size
                updates["stage2.tokens"] = math.ceil(fraction * self.cfg.train.tokens)
            elif per_param:  # the stage-2 budget in tokens per non-embedding parameter of this size
                model = self.cfg.model.model_copy(update=size.model_overrides())
                updates["stage2.tokens"] = math.ceil(per_param * non_embedding(model, 1))
            loaded_size = loaded.derive(f"scaling.sizes: {size.name}", updates)
            self.jobs[size.name] = MainJob(
                loaded_size, dry_run, streams=[p for p in self.streams if p > 1], report=False
            )
        self.largest = max(self.jobs, key=lambda name: non_embedding(self.jobs[name].cfg.model, 1))
        self.seeds = stage2_seeds(self.cfg.scaling)
        self._seed_jobs: list[MainJob] | None = None

    def run(self, console) -> Path:
        for name, job in self.jobs.items():
            console.rule(f"[bold]size {name}[/]: {_shape(job)}")
            job.run(console)
        if self.dry_run:
            if self.seeds > 1:
                console.print(
                    f"then stage 2 again at size {self.largest}, seeds 1 .. {self.seeds - 1}, every P, "
                    f"from its stage 1 (planned once stage 1 and seed 0 have run)"
                )
            return self.report_dir / "scaling.md"
        for i, job in enumerate(self.seed_jobs(), start=1):
            console.rule(f"[bold]size {self.largest}[/]: stage 2, seed {i}")
            job.run(console)
        console.rule("scaling law fit, inference cost, report")
        return write_report(self, console)

    def seed_jobs(self) -> list[MainJob]:
        """Stage 2 of the largest size again for seeds 1 .. stage2_seeds - 1 (every P, the dense
        continuation and, with ``scaling.prefix_control``, the one-prefix control): planned once seed 0's stage 1 and dense continuation are
        trained, since each starts from that stage 1 and reads on after that many stage-2 tokens."""
        if self._seed_jobs is None and self.seeds > 1:
            job = self.jobs[self.largest]
            try:
                stage1 = read_config(job.folders.consolidated)["tokens_seen"]
                stage2 = read_config(RunPaths.of(job.configs["dense"].config).portable)["tokens_seen"]
            except (CheckpointError, KeyError):
                return []  # seed 0 has not run yet
            self._seed_jobs = [
                _Stage2Seed(
                    job.loaded.derive(
                        f"scaling.stage2_seeds: seed {i}",
                        {
                            "run.output_dir": str(self.root / self.largest / f"stage2-seed{i}"),
                            "run.name": f"{self.cfg.run.name}-{self.largest}-seed{i}",
                            "stage2.init_from": str(job.folders.consolidated),
                        },
                    ),
                    self.dry_run,
                    streams=[p for p in self.streams if p > 1],
                    seed=i,
                    skip_tokens=stage1 + i * stage2,
                )
                for i in range(1, self.seeds)
            ]
        return self._seed_jobs or []

    # ------------------------------------------------------------------ results

    def results(self) -> list[dict]:
        """One row per (size, P): N, val loss (the mean over stage-2 seeds: ``seeds``, ``seed_losses``);
        P=1 is the dense model continued for the same tokens."""
        rows = []
        for name, job in self.jobs.items():
            evals = json.loads(job.folders.eval.read_text())
            others = [json.loads(j.folders.eval.read_text()) for j in self.seed_jobs()] if name == self.largest else []
            n = parameter_counts(job.cfg.model, job.parscale(1), 1).non_embedding
            for p in self.streams:
                key = "dense" if p == 1 else stage2_key(p)
                result = evals[key]
                seeds = [result] + [e[key] for e in others]
                spreads = [r["stream_spread"] for r in seeds if r.get("stream_spread") is not None]
                rows.append(
                    {
                        "size": name,
                        "params": n,
                        "streams": p,
                        "val_loss": sum(r["val_loss"] for r in seeds) / len(seeds),
                        "seeds": len(seeds),
                        "seed_losses": [r["val_loss"] for r in seeds],
                        "tokens_seen": result["tokens_seen"],
                        "stage1_val_loss": evals["stage1"]["val_loss"],
                        "stream_spread": sum(spreads) / len(spreads) if spreads else None,
                        **(_prefix_control([evals, *others]) if p == 1 else {"prefix_control_val_loss": None}),
                    }
                )
        return rows

    def fits(self, rows: list[dict]) -> dict:
        """The law on the (size, P) seed means, N the non-embedding parameters at P = 1: free (k down
        to its bound, flagged when hit) and with the paper's k, k's profile interval (or "not
        identified") and which of E, A, alpha, k the sizes identify."""
        points = [Point(r["params"], r["streams"], r["val_loss"]) for r in rows]
        delta = self.cfg.scaling.huber_delta
        return {
            "free": fit_law(points, delta),
            "paper_k": fit_law(points, delta, fixed_k=PAPER_K),
            "k_interval": profile_k(points, delta),
            "identified": identified_parameters(points, delta),
        }

    def inference(self, k_values: list[float]) -> list[dict]:
        """Decode cost of the largest size at each P against its dense equivalent, per k."""
        job = max(self.jobs.values(), key=lambda j: j.cfg.model.hidden_size * j.cfg.model.num_layers)
        vocab = read_config(RunPaths.of(job.configs["stage1"].config).portable)["vocab_size"]
        inf = self.cfg.scaling.inference
        rows = []
        for k in k_values:
            for c in compare(
                job.cfg.model,
                job.stage2.parscale,
                vocab,
                self.streams,
                k,
                inf.batch_sizes,
                inf.prompt_len,
                inf.new_tokens,
                inf.repeats,
            ):
                rows.append(c.as_dict())
        return rows


class _Stage2Seed(MainJob):
    """Stage 2 again from a finished stage 1 (``stage2.init_from``): the ParScale tensors from
    ``run.seed + seed``, every stage-2 run (ParScale and the dense continuation) reading the data order
    from ``skip_tokens`` on; ``run.seed`` itself is unchanged, so are the validation batches."""

    def __init__(self, loaded: LoadedConfig, dry_run: bool, streams: list[int], seed: int, skip_tokens: int):
        self.skip_tokens = skip_tokens
        super().__init__(loaded, dry_run, streams=streams, report=False, init_seed_offset=seed)

    def _stage2_run(self, out, parscale, init) -> LoadedConfig:
        return (
            super()
            ._stage2_run(out, parscale, init)
            .derive(f"stage-2 seed {self.init_seed_offset}", {"train.skip_tokens": self.skip_tokens})
        )


def _prefix_control(evals: list[dict]) -> dict:
    """The one-prefix control's loss per stage-2 seed (None where that seed has none) and their mean."""
    losses = [e.get("prefix1", {}).get("val_loss") for e in evals]
    have = [v for v in losses if v is not None]
    return {
        "prefix_control_val_loss": sum(have) / len(have) if have else None,
        "prefix_control_seed_losses": losses,
    }


def _shape(job: MainJob) -> str:
    m = job.cfg.model
    return f"{m.num_layers} layers x {m.hidden_size} hidden, FFN {m.ffn_hidden_size}, {m.num_attention_heads} heads"
