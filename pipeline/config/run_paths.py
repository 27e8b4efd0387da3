"""Where a training run keeps each of its files: the one rule every writer and reader of a run folder
uses (the trainer, the main job, the scaling experiments, ``parscale eval``, the converters).

    <run.output_dir>/
        config.resolved.yaml   the config the run trained with (written at start-up)
        job.yaml               the config a job stage was launched with (``parscale run``)
        checkpoints/           trainer checkpoints, or ``checkpoint.dir`` when set
        metrics.jsonl          ``logging.metrics_file``
        portable/              the portable checkpoint exported at the end
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .job import JobConfig

RESOLVED_NAME = "config.resolved.yaml"
JOB_NAME = "job.yaml"
CHECKPOINTS = "checkpoints"
PORTABLE = "portable"


@dataclass(frozen=True)
class RunPaths:
    root: Path
    checkpoint_dir: Path | None = None  # ``checkpoint.dir`` when set: checkpoints live there
    metrics_file: str = "metrics.jsonl"

    @classmethod
    def of(cls, cfg: JobConfig) -> RunPaths:
        """The files of the run ``cfg`` configures."""
        ckpt = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
        return cls(Path(cfg.run.output_dir), ckpt, cfg.logging.metrics_file)

    @classmethod
    def of_folder(cls, folder: str | Path) -> RunPaths:
        """The files of the run in ``folder``, as its ``config.resolved.yaml`` placed them (a run that
        set ``checkpoint.dir`` or ``logging.metrics_file`` is found where it wrote)."""
        root = Path(folder)
        try:
            saved = yaml.safe_load((root / RESOLVED_NAME).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            saved = {}
        if not isinstance(saved, dict):
            saved = {}
        ckpt = (saved.get("checkpoint") or {}).get("dir")
        metrics = (saved.get("logging") or {}).get("metrics_file") or "metrics.jsonl"
        return cls(root, Path(ckpt) if ckpt else None, metrics)

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.root / CHECKPOINTS

    @property
    def portable(self) -> Path:
        return self.root / PORTABLE

    @property
    def metrics(self) -> Path:
        return self.root / self.metrics_file  # an absolute metrics_file replaces the root

    @property
    def resolved(self) -> Path:
        return self.root / RESOLVED_NAME

    @property
    def job_yaml(self) -> Path:
        return self.root / JOB_NAME


__all__ = ["CHECKPOINTS", "JOB_NAME", "PORTABLE", "RESOLVED_NAME", "RunPaths"]
