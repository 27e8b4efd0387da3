"""``parscale ablate``: what makes ParScale's streams differ in stage 2. The main job of the config
(stage 1 dense, stage 2 at ``stage2.parscale.streams``, the dense control and the one-prefix
control) is the baseline; each variant of ``ablation.variants`` trains stage 2 again at the same P
from the same stage 1 with a few ``stage2.*`` / ``optimizer.*`` keys changed. Every model is
evaluated on the same validation batches, with the stream diagnostics (spread, weights, prefix and
update cosines, diversity gain), ``ablation.seeds`` seeds each: seed i initialises the prefixes and
the aggregator from ``run.seed + i``; the data order is the controls' for every run, so each
difference is paired on the same tokens.

Layout: the main job's folders under ``run.output_dir``; variant and extra-seed runs under
``run.output_dir/ablation/<variant>-seed<i>/``; results in ``ablation/eval.json``, the report in
``ablation/report/ablation.md``. Finished runs and evaluations are skipped on a rerun."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.portable import load_portable, read_config
from ..config import LoadedConfig, RunPaths
from ..config.ablation import BASELINE, CONTROLS
from ..distributed import single_process
from ..mainjob.folders import stage2_key
from ..mainjob.stages import MainJob
from ..model.stream_stats import mean_pairwise_cosine, stream_vectors
from ..training.evaluation import evaluate_portable
from ..utils.fs import atomic_write_text
from .ablation_report import write_report


@dataclass(frozen=True)
class Variant:
    name: str  # "baseline" or the variant's name
    seed: int  # index, 0 .. seeds - 1
    job: MainJob  # its stage 2 (the baseline's seed 0 is the main job itself)
    sets: tuple[str, ...]  # the keys that make it, as KEY=VALUE (for the report)

    @property
    def key(self) -> str:
        return f"{self.name}-seed{self.seed}"

    @property
    def streams(self) -> int:
        return self.job.streams[0]

    @property
    def portable(self) -> Path:
        return RunPaths.of(self.job.configs[stage2_key(self.streams)].config).portable

    @property
    def init(self) -> Path:
        return self.job.folders.init(self.streams)


class Stage2Ablation:
    def __init__(self, loaded: LoadedConfig, dry_run: bool = False):
        loaded.require("model", "train", "stage2", "ablation", by="ablate")
        self.loaded, self.cfg, self.dry_run = loaded, loaded.config, dry_run
        self.path, self.overrides = loaded.files[0], list(loaded.overrides)  # as given: for the report
        self.root = Path(self.cfg.run.output_dir) / "ablation"
        self.report_dir = self.root / "report"
        self.main = MainJob(loaded, dry_run, report=False, streams=[self.cfg.stage2.parscale.streams])
        plan = [(BASELINE, {})] + [(v.name, v.set) for v in self.cfg.ablation.variants]
        self.variants: list[Variant] = []
        for name, updates in plan:
            sets = tuple(f"{k}={json.dumps(val)}" for k, val in updates.items())
            for i in range(self.cfg.ablation.seeds):
                if name == BASELINE and i == 0:
                    self.variants.append(Variant(name, 0, self.main, sets))
                    continue
                variant = loaded.derive(f"ablation.variants: {name}", updates)
                if variant.config.stage2.parscale.streams != self.main.streams[0]:
                    raise loaded.error(
                        "ablation.variants",
                        f"{name}: a variant must keep stage2.parscale.streams ({self.main.streams[0]})",
                    )
                job = MainJob(
                    variant,
                    dry_run,
                    report=False,
                    streams=self.main.streams,
                    stage2_root=self.root / f"{name}-seed{i}",
                    init_seed_offset=i,
                )
                self.variants.append(Variant(name, i, job, sets))

    # ------------------------------------------------------------------ running

    def run(self, console) -> Path:
        console.rule(f"[bold]baseline[/]: the main job ({self.cfg.run.output_dir})")
        self.main.run(console)
        for variant in self.variants[1:]:
            for name, done, action in variant.job.stages():
                if not name.startswith(("dense -> ParScale", "stage 2: ParScale")):
                    continue  # prep, stage 1 and the controls are the main job's
                if done():
                    console.print(f"[green]skip[/] {variant.key}: {name}: output already there")
                    continue
                console.rule(f"{variant.key}: {name}")
                action()
        report = self.report_dir / "ablation.md"
        if self.dry_run:
            return report
        console.rule("evaluation")
        results = self.evaluate(console)
        return write_report(self, results)

    def _eval_path(self) -> Path:
        return self.root / "eval.json"

    def evaluate(self, console) -> dict[str, dict]:
        """Every model on the main job's validation batches, cached by the tokens its export saw:
        the variants, the dense control and the one-prefix control."""
        try:
            saved = json.loads(self._eval_path().read_text())
        except (OSError, ValueError):
            saved = {}
        models = {v.key: (v.portable, v.init) for v in self.variants}
        for control in CONTROLS:
            if control in self.main.configs:
                models[control] = (RunPaths.of(self.main.configs[control].config).portable, None)
        for key, (portable, init) in models.items():
            seen = read_config(portable).get("tokens_seen")
            if saved.get(key, {}).get("tokens_seen") == seen:
                continue
            result = evaluate_portable(self.loaded, str(portable))
            if init is not None:
                result["update_cosine"] = update_cosine(init, portable)
            saved[key] = result
            atomic_write_text(self._eval_path(), json.dumps(saved, indent=2))
            console.print(f"{key}: val loss {result['val_loss']:.4f}")
        return saved


def update_cosine(init: Path, final: Path) -> float:
    """Mean pairwise cosine of the streams' prefix changes from ``init`` to ``final`` (portables)."""
    with single_process(seed=0):
        start, _ = load_portable(str(init))
        end, _ = load_portable(str(final))
        return mean_pairwise_cosine(stream_vectors(end) - stream_vectors(start))


__all__ = ["BASELINE", "CONTROLS", "Stage2Ablation", "Variant", "update_cosine"]
