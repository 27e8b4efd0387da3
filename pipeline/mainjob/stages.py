"""The main job: data prep -> stage 1 (dense) -> consolidate -> dense-to-ParScale -> stage 2
(ParScale, and a dense control at equal tokens) -> evaluation -> report, from one config.

Every stage writes under ``run.output_dir`` and is skipped when its output is already there and
complete, so a rerun continues where the last one stopped (a training stage cut short resumes from
its own checkpoints). Training stages run under torchrun with TP x DP processes (DP unset: every
visible GPU in whole TP groups, or one TP group on the CPU; a stage of one process runs in the
job's own process); each stage's exact config is written as
``<stage>/config.resolved.yaml``."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

from checkpoints_tools.consolidate import consolidate
from checkpoints_tools.to_parscale import convert
from data_prep.prepare import is_complete, prepare

from ..checkpoint.portable import CheckpointError, read_config
from ..config import LoadedConfig, RunPaths, write_resolved
from ..config.model import ModelConfig, ParScaleConfig
from ..config.run_paths import JOB_NAME
from ..distributed.launcher import TorchrunLaunch, processes_per_job
from ..distributed.runtime import own_world
from ..errors import EXIT_USER_ERROR, UserError
from ..training.downstream_eval import evaluate_portable_tasks, task_settings
from ..training.evaluation import evaluate_portable
from ..training.train import train
from ..utils.folder_lock import RERUN_GRACE_S, folder_lock, lock_path_in
from ..utils.fs import atomic_write_text, full_disk_named
from .folders import JobFolders, stage2_key
from .report import write_report


def _portable_meta(directory: Path) -> dict | None:
    """The config.json of the portable checkpoint in ``directory`` (None: there is none yet)."""
    try:
        return read_config(directory)
    except CheckpointError:
        return None


def _same_model(meta: dict, model: ModelConfig, parscale: ParScaleConfig) -> bool:
    """Whether a portable checkpoint's config describes this model (fields it predates take their defaults)."""
    try:
        saved = ModelConfig.model_validate({**meta["model"], "vocab_size": model.vocab_size})
        return saved.identity() == model.identity() and ParScaleConfig.model_validate(meta["parscale"]) == parscale
    except (KeyError, ValueError):
        return False


def is_trained(loaded: LoadedConfig) -> bool:
    """Whether the run folder of ``loaded`` holds its finished export; a folder holding another
    model or ParScale setting is refused (nothing is changed)."""
    cfg = loaded.config
    meta = _portable_meta(RunPaths.of(cfg).portable)
    if meta is not None and not _same_model(meta, cfg.model, cfg.parscale):
        out = cfg.run.output_dir
        raise UserError(
            f"{out} holds a run of another model or ParScale setting than this config asks for; "
            f"move or delete {out}, or set another run.output_dir (nothing was changed)"
        )
    return meta is not None and meta.get("tokens_seen", 0) >= cfg.train.tokens


def train_stage(loaded: LoadedConfig, name: str, nproc: int, dry_run: bool) -> None:
    """``parscale train`` on ``loaded``: in this process for one process (no launcher, no second
    import of torch and DeepSpeed), under torchrun with ``nproc`` processes otherwise. Its config is
    written as ``<run.output_dir>/job.yaml``. A run that failed or was stopped resumes from its
    checkpoints when the job runs again."""
    paths = RunPaths.of(loaded.config)
    resolved = paths.job_yaml if dry_run else write_resolved(loaded, paths.root, JOB_NAME)
    launch = TorchrunLaunch(module="pipeline.cli", args=["train", str(resolved)], nproc_per_node=nproc)
    again = "rerun the same command to resume from its last checkpoint"
    if launch.single_process:
        if dry_run:
            print(f"parscale train {resolved}  (in this process)")
            return
        with own_world():
            train(loaded)
    else:
        rc = launch.run(dry_run=dry_run)
        if rc == EXIT_USER_ERROR:  # the ranks refused or hit a full disk and said why, naming the key or file
            raise UserError(f"{name} training ended with exit {rc} (its reason is printed above); once fixed, {again}")
        if rc:
            raise UserError(f"{name} training failed (exit {rc}); {again}")
        if dry_run:
            return
    if not is_trained(loaded):  # a stop file or signal ended it early: the next stage must not start
        raise UserError(f"{name} training stopped before the end of its budget (signal or stop file); {again}")


def _start_model(start: Path, loaded: LoadedConfig) -> LoadedConfig:
    """The job's config with the model of ``stage2.init_from`` (its every recorded key)."""
    try:
        model = read_config(start)["model"]
    except CheckpointError as exc:
        raise loaded.error("stage2.init_from", str(exc)) from None
    return loaded.derive("stage2.init_from's model", {f"model.{key}": value for key, value in model.items()})


class MainJob:
    """``streams``: the stage-2 stream counts to train (default: ``stage2.parscale.streams``); each
    gets its own conversion and run. ``report``: whether the job writes its own report.
    ``stage2_root``: a folder for the ParScale conversions and stage-2 runs other than
    ``run.output_dir`` (a variant of stage 2 on the same stage 1). ``init_seed_offset``: added to
    ``run.seed`` for the ParScale conversion only (another init of prefixes and aggregator, the same
    data order)."""

    def __init__(
        self,
        loaded: LoadedConfig,
        dry_run: bool = False,
        streams: list[int] | None = None,
        report: bool = True,
        stage2_root: Path | None = None,
        init_seed_offset: int = 0,
    ):
        loaded.require("stage2", by="run")
        self.stage2 = loaded.config.stage2
        #: an existing dense checkpoint stage 2 starts from (stage2.init_from), else None: stage 1 trains
        self.start = Path(self.stage2.init_from) if self.stage2.init_from else None
        self.dry_run, self.with_report = dry_run, report
        self.path, self.overrides = loaded.files[0], list(loaded.overrides)  # as given: for the report
        loaded = _start_model(self.start, loaded) if self.start else loaded
        loaded.require("model", *(() if self.start else ("train",)), by="run")
        if loaded.config.parscale.streams != 1:
            raise loaded.error(
                "parscale.streams",
                f"{loaded.config.parscale.streams}, but stage 1 of 'parscale run' is dense; the P of stage 2 is "
                "stage2.parscale.streams (the one key for it in this job)",
            )
        self.loaded, self.cfg = loaded, loaded.config
        self.streams = streams or [self.stage2.parscale.streams]
        self.folders = JobFolders(Path(self.cfg.run.output_dir), stage2_root)
        self.source = self.start or self.folders.consolidated  # what stage 2 converts and the controls continue
        self.init_seed_offset = init_seed_offset
        self.nproc = processes_per_job(self.cfg.parallel)
        self.configs = {"stage1": self._derive(self.folders.stage1, {})}
        for p in self.streams:
            self.configs[stage2_key(p)] = self._stage2_run(
                self.folders.stage2(p), self.parscale(p), self.folders.init(p)
            )
        if self.stage2.dense_baseline:
            self.configs["dense"] = self._stage2_run(self.folders.dense, ParScaleConfig(streams=1), self.source)
        if self.stage2.prefix_control:
            control = self.parscale(1).model_copy(update={"single_prefix": True})
            self.configs["prefix1"] = self._stage2_run(self.folders.prefix_control, control, self.source)
        self.timings: dict[str, dict] = {}

    def parscale(self, streams: int):
        return self.stage2.parscale.model_copy(update={"streams": streams})

    # ------------------------------------------------------------------ configs

    def _stage2_run(self, out: Path, parscale: ParScaleConfig, init: Path) -> LoadedConfig:
        updates = {
            "parscale": parscale,
            "train.tokens": self.stage2.tokens,
            "train.init_from": str(init),
            "train.skip_tokens": None,  # its rule: read on after the init's tokens_seen (stage 1's)
            "schedule": self.stage2.schedule,
        }
        return self._derive(out, updates | ({"optimizer.lr": self.stage2.lr} if self.stage2.lr else {}))

    def _derive(self, out: Path, updates: dict) -> LoadedConfig:
        """The config of the run in ``out``, validated once. With ``checkpoint.dir`` set, each run keeps
        its checkpoints in its own folder under it (the runs of a job never share one)."""
        where = {"run.output_dir": str(out)}
        if self.cfg.checkpoint.dir:
            below = out.relative_to(self.folders.root) if out.is_relative_to(self.folders.root) else Path(out.name)
            where["checkpoint.dir"] = str(Path(self.cfg.checkpoint.dir) / below)
        return self.loaded.derive(f"parscale run ({out.name})", where | updates)

    # ------------------------------------------------------------------ stages

    def stages(self) -> list[tuple[str, object, object]]:
        """(name, is_done, run) for each stage, in order."""
        stages = [("data prep", self._prep_done, self._prep)]
        if self.start is None:
            stages += [
                ("stage 1: dense", lambda: self._trained("stage1"), lambda: self._train("stage1")),
                ("consolidate stage 1", self._consolidated, self._consolidate),
            ]
        for p in self.streams:
            key = stage2_key(p)
            stages += [
                (f"dense -> ParScale P={p}", lambda p=p: self._converted(p), lambda p=p: self._convert(p)),
                (f"stage 2: ParScale P={p}", lambda key=key: self._trained(key), lambda key=key: self._train(key)),
            ]
        if "dense" in self.configs:
            stages.append(("stage 2: dense control", lambda: self._trained("dense"), lambda: self._train("dense")))
        if "prefix1" in self.configs:
            stages.append(
                ("stage 2: P=1 + one prefix control", lambda: self._trained("prefix1"), lambda: self._train("prefix1"))
            )
        stages.append(("evaluation", self._evaluated, self._evaluate))
        if self.with_report:
            stages.append(("report", lambda: False, self._report))
        return stages

    def run(self, console) -> Path:
        """Every stage not done yet, in order, holding the job folder's lock (a second job on the
        folder is refused; a dry run takes no lock)."""
        lock = (
            nullcontext()
            if self.dry_run
            else folder_lock(lock_path_in(self.cfg.run.output_dir), "parscale run", RERUN_GRACE_S)
        )
        with lock:
            return self._run(console)

    def _run(self, console) -> Path:
        for name, done, action in self.stages():
            if done():
                console.print(f"[green]skip[/] {name}: output already there")
                self.timings[name] = {"status": "skipped (done)", "seconds": 0.0}
                continue
            console.rule(f"{name}")
            start = time.perf_counter()
            with full_disk_named(self.cfg.run.output_dir):
                action()
            self.timings[name] = {
                "status": "dry run" if self.dry_run else "ran",
                "seconds": time.perf_counter() - start,
            }
        return self.folders.report / "report.md"

    def _prep_done(self) -> bool:
        return is_complete(self.cfg)

    def _prep(self) -> None:
        if not self.dry_run:
            prepare(self.loaded)

    def _final(self, key: str) -> dict | None:
        return _portable_meta(RunPaths.of(self.configs[key].config).portable)

    def _trained(self, key: str) -> bool:
        return is_trained(self.configs[key])

    def _train(self, key: str) -> None:
        train_stage(self.configs[key], key, self.nproc, self.dry_run)

    def _consolidated(self) -> bool:
        meta, final = _portable_meta(self.folders.consolidated), self._final("stage1")
        return meta is not None and final is not None and meta.get("step") == final.get("step")

    def _consolidate(self) -> None:
        if self.dry_run:
            stage1 = RunPaths.of(self.configs["stage1"].config).checkpoints
            print(f"parscale convert consolidate {stage1} {self.folders.consolidated}")
            return
        result = consolidate(RunPaths.of(self.configs["stage1"].config).checkpoints, self.folders.consolidated)
        print(result["verified"])

    def _converted(self, streams: int) -> bool:
        meta, source = _portable_meta(self.folders.init(streams)), _portable_meta(self.source)
        return (
            meta is not None
            and source is not None
            and meta.get("step") == source.get("step")
            and ParScaleConfig.model_validate(meta["parscale"]) == self.parscale(streams)
        )

    def _convert(self, streams: int) -> None:
        if self.dry_run:
            print(f"parscale convert to-parscale {self.source} {self.folders.init(streams)} --streams {streams}")
            return
        result = convert(
            self.source,
            self.folders.init(streams),
            self.parscale(streams),
            seed=self.cfg.run.seed + self.init_seed_offset,
        )
        print(result["verified"])

    def _finals(self) -> dict[str, Path]:
        finals = {key: RunPaths.of(loaded.config).portable for key, loaded in self.configs.items()}
        return finals | ({"stage1": self.start} if self.start else {})

    def _evaluated(self) -> bool:
        """Whether eval.json holds every final model as trained, with the downstream tasks
        (``eval.tasks``) the config asks for now (none: none)."""
        try:
            saved = json.loads(self.folders.eval.read_text())
        except (OSError, ValueError):
            return False
        finals = {k: (_portable_meta(p) or {}).get("tokens_seen") for k, p in self._finals().items()}
        tasks = task_settings(self.cfg.eval)
        return {k: v.get("tokens_seen") for k, v in saved.items()} == finals and all(
            (v.get("downstream") or {}).get("settings") == tasks for v in saved.values()
        )

    def _evaluate(self) -> None:
        """Each final model's validation loss (and stream diagnostics) and, with ``eval.tasks``, its
        downstream metrics (``downstream``: settings, metrics, seconds), into eval.json."""
        if self.dry_run:
            return
        results = {}
        for key, path in self._finals().items():
            results[key] = evaluate_portable(self.configs[key], str(path))
            if self.cfg.eval.tasks:
                results[key]["downstream"] = evaluate_portable_tasks(path, self.cfg.eval)
        atomic_write_text(self.folders.eval, json.dumps(results, indent=2))
        for key, result in results.items():
            print(
                f"{key}: val loss {result['val_loss']:.4f} (ppl {result['val_ppl']:.2f}) on {result['tokens']} tokens"
            )
            if "downstream" in result:
                figures = ", ".join(f"{k} {v:.4f}" for k, v in result["downstream"]["metrics"].items())
                print(f"{key}: downstream {figures} ({result['downstream']['seconds']:.1f} s)")

    def _report(self) -> None:
        if not self.dry_run:
            write_report(self)
