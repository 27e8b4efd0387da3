"""Where training metrics go: a console line per interval (rank 0), a JSONL file, and wandb
(offline unless the config says online)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from ..config.job import JobConfig


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsSink:
    def __init__(self, cfg: JobConfig, enabled: bool):
        self.enabled = enabled
        self.path = Path(cfg.run.output_dir) / cfg.logging.metrics_file
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.logging.wandb_mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=cfg.logging.wandb_project,
                name=cfg.run.name,
                mode=cfg.logging.wandb_mode,
                dir=str(Path(cfg.run.output_dir)),
                config=cfg.model_dump(mode="json"),
                resume="allow",
                id=_run_id(cfg),
            )

    def log(self, record: dict, console: str | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                step=record.get("step"),
            )
        if console:
            print(console, flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_records(path: str | Path) -> list[dict]:
    """A metrics file's records, one per (kind, step) in step order: a resumed run logs the steps it
    replays a second time, and the later record (what the finished run did) wins."""
    records: dict[tuple[str, int], dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[(record.get("kind", "train"), record.get("step", -1))] = record
    return sorted(records.values(), key=lambda r: (r.get("step", -1), r.get("kind", "train")))


def _run_id(cfg: JobConfig) -> str:
    return hashlib.sha1(f"{cfg.run.name}:{Path(cfg.run.output_dir).resolve()}".encode()).hexdigest()[:12]
