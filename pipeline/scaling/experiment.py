"""``parscale scaling`` in two-stage mode: for each model size, the main job (prep, stage 1 dense, consolidate, then
stage 2 at every P > 1 and the dense model continued for the same tokens as P = 1, evaluation on
the same validation batches), then the scaling-law fit, the inference-cost comparison and a report.
Each size lives in ``run.output_dir/<size>/`` and skips what it already finished."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..checkpoint.portable import read_config
from ..config import LoadedConfig, RunPaths
from ..mainjob.stages import MainJob, stage2_key
from ..model.counting import parameter_counts
from .inference_cost import compare, non_embedding
from .law import PAPER_K, LawFit, Point, fit_law
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
        for size in self.cfg.scaling.sizes:
            updates = {
                "run.output_dir": str(self.root / size.name),
                "run.name": f"{self.cfg.run.name}-{size.name}",
                "stage2.dense_baseline": True,
                "stage2.prefix_control": self.cfg.scaling.prefix_control,
                **{f"model.{k}": v for k, v in size.model_overrides().items()},
            }
            if per_param:  # the stage-2 budget in tokens per non-embedding parameter of this size
                model = self.cfg.model.model_copy(update=size.model_overrides())
                updates["stage2.tokens"] = math.ceil(per_param * non_embedding(model, 1))
            loaded_size = loaded.derive(f"scaling.sizes: {size.name}", updates)
            self.jobs[size.name] = MainJob(
                loaded_size, dry_run, streams=[p for p in self.streams if p > 1], report=False
            )

    def run(self, console) -> Path:
        for name, job in self.jobs.items():
            console.rule(f"[bold]size {name}[/]: {_shape(job)}")
            job.run(console)
        report = self.report_dir / "scaling.md"
        if self.dry_run:
            return report
        console.rule("scaling law fit, inference cost, report")
        return write_report(self, console)

    # ------------------------------------------------------------------ results

    def results(self) -> list[dict]:
        """One row per (size, P): N, val loss; P=1 is the dense model continued for the same tokens."""
        rows = []
        for name, job in self.jobs.items():
            evals = json.loads(job.folders.eval.read_text())
            n = parameter_counts(job.cfg.model, job.parscale(1), 1).non_embedding
            for p in self.streams:
                result = evals["dense" if p == 1 else stage2_key(p)]
                rows.append(
                    {
                        "size": name,
                        "params": n,
                        "streams": p,
                        "val_loss": result["val_loss"],
                        "tokens_seen": result["tokens_seen"],
                        "stage1_val_loss": evals["stage1"]["val_loss"],
                        "stream_spread": result.get("stream_spread"),
                        "prefix_control_val_loss": evals.get("prefix1", {}).get("val_loss") if p == 1 else None,
                    }
                )
        return rows

    def fits(self, rows: list[dict]) -> dict[str, LawFit]:
        points = [Point(r["params"], r["streams"], r["val_loss"]) for r in rows]
        delta = self.cfg.scaling.huber_delta
        return {"free": fit_law(points, delta), "paper_k": fit_law(points, delta, fixed_k=PAPER_K)}

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


def _shape(job: MainJob) -> str:
    m = job.cfg.model
    return f"{m.num_layers} layers x {m.hidden_size} hidden, FFN {m.ffn_hidden_size}, {m.num_attention_heads} heads"
