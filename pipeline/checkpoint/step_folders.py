"""The trainer's checkpoint folder: ``<dir>/step<N>/`` per save, a ``COMPLETE`` marker written last,
``<dir>/latest`` naming the newest complete one, the trainer's state and, for a folder written by
``parscale convert reshard``, a ``resharded.json`` record. Readers and the trainer both use these."""

from __future__ import annotations

import json
from pathlib import Path

from ..config.run_paths import RESOLVED_NAME
from ..errors import UserError

LATEST, COMPLETE, STATE, RESHARDED = ("latest", "COMPLETE", "trainer_state.json", "resharded.json")
CONFIG = RESOLVED_NAME  # a checkpoint carries its run's resolved config, under the run folder's name for it


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("step*") if (p / COMPLETE).exists())


def latest_tag(directory: str | Path) -> str | None:
    """The tag ``latest`` points at if that checkpoint is complete, else the newest complete one."""
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.exists():
        tag = pointer.read_text().strip()
        if (directory / tag / COMPLETE).exists():
            return tag
    tags = complete_tags(directory)
    return tags[-1] if tags else None


def is_resharded(folder: Path) -> bool:
    """Written by ``parscale convert reshard`` (per-TP-rank safetensors, no DeepSpeed files)."""
    return (folder / RESHARDED).exists()


def read_state(folder: Path) -> dict:
    """The trainer state a complete checkpoint folder carries (readable without loading it)."""
    try:
        return json.loads((folder / STATE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / STATE}: unreadable ({exc})") from None
