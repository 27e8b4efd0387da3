"""Where training metrics go: a console line per interval (rank 0), a JSONL file, and wandb
(offline unless the config says online)."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

from ..config.job import JobConfig
from ..config.run_paths import RunPaths
from ..errors import UserError


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsSink:
    def __init__(self, cfg: JobConfig, enabled: bool):
        self.enabled = enabled
        self.path = RunPaths.of(cfg).metrics
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_partial_tail(self.path)
        if cfg.logging.wandb_mode != "disabled" and (wandb := _import_wandb(cfg.logging.wandb_mode, self.path)):
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
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:  # one write of a whole line; a disk that fills midway is named (the rerun cuts the partial line)
            with open(self.path, "ab", buffering=0) as handle:
                handle.write(line)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
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


def _import_wandb(mode: str, metrics: Path):
    """wandb, or None where it is not installed (a GPU machine set up from ``launch/gpu_wheels.sh``
    has no wandb): offline logging is the default, so its absence costs only the wandb copy of the
    metrics and is said once; ``online`` was asked for explicitly and is refused at start-up."""
    try:
        import wandb
    except ImportError as exc:
        if mode == "online":
            raise UserError(
                f"logging.wandb_mode: online, but wandb cannot be imported ({exc}): install wandb, "
                "or set logging.wandb_mode: offline or disabled"
            ) from exc
        print(
            f"warning: wandb cannot be imported ({exc}): metrics go to {metrics} only "
            "(install wandb, or set logging.wandb_mode: disabled to silence this)",
            file=sys.stderr,
            flush=True,
        )
        return None
    return wandb


def cut_partial_tail(path: Path) -> int:
    """Remove a last line cut short (a run killed or out of space mid-write) so appends start on a
    line of their own; says so, naming the file. Returns the bytes removed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    print(
        f"warning: {path}: removed a partial last line ({len(data) - keep} bytes) left by an interrupted write",
        file=sys.stderr,
        flush=True,
    )
    return len(data) - keep


def read_records(path: str | Path) -> list[dict]:
    """A metrics file's records, one per (kind, step) in step order: a resumed run logs the steps it
    replays a second time, and the later record (what the finished run did) wins. A line that is not
    a JSON record (cut short by a full disk) is skipped and counted in a warning naming the file."""
    records: dict[tuple[str, int], dict] = {}
    bad = 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(record, dict):
                bad += 1
                continue
            records[(record.get("kind", "train"), record.get("step", -1))] = record
    if bad:
        print(f"warning: {path}: skipped {bad} malformed line(s)", file=sys.stderr, flush=True)
    return sorted(records.values(), key=lambda r: (r.get("step", -1), r.get("kind", "train")))


def _run_id(cfg: JobConfig) -> str:
    return hashlib.sha1(f"{cfg.run.name}:{Path(cfg.run.output_dir).resolve()}".encode()).hexdigest()[:12]
