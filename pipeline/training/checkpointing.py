"""Checkpoints: DeepSpeed's (model, optimizer, ZeRO partitions) plus the trainer's state, in
``<dir>/step<N>/``. A save is complete only when every rank has written and rank 0 has put a
``COMPLETE`` marker in it; only then is ``<dir>/latest`` replaced (atomically) to point at it, so a
crash during a save leaves the previous checkpoint as the latest. The last K complete ones are kept.
Every file's size and sha256 are recorded before the marker (``files.json``), and a resume checks
them, falling back to the newest intact checkpoint."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint import integrity
from ..checkpoint.step_folders import COMPLETE, CONFIG, LATEST, STATE, complete_tags, latest_tag, tag_for
from ..checkpoint.trainer_ckpt import safe_load
from ..errors import UserError
from ..utils.collectives import barrier
from ..utils.fs import atomic_write_text, out_of_space


def rng_state() -> dict:
    """Plain tensors and Python values only, so the files load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _aside(directory: Path, tag: str) -> Path:
    """A free name for a damaged checkpoint folder (``complete_tags`` does not see it)."""
    aside, n = directory / f"corrupt-{tag}", 1
    while aside.exists():
        aside, n = directory / f"corrupt-{tag}-{n}", n + 1
    return aside


def intact_tag(directory: str | Path, hashes: bool = True, distributed: bool = True) -> str | None:
    """The newest complete checkpoint whose files match their record (``latest``'s first). A damaged
    one is named in a warning and set aside as ``corrupt-<tag>`` (kept, never deleted); None when
    there is no checkpoint. Collective when ``distributed``. Raises when every checkpoint is damaged."""
    directory = Path(directory)
    first = latest_tag(directory)
    candidates = [first] + [t for t in reversed(complete_tags(directory)) if t != first] if first else []
    talk = not distributed or dist.get_rank() == 0
    pointed = (directory / LATEST).read_text().strip() if (directory / LATEST).is_file() else None
    if pointed and first and pointed != first and talk:
        print(
            f"warning: {directory / pointed}: an incomplete save (no {COMPLETE} marker); resuming from {first}",
            file=sys.stderr,
            flush=True,
        )
    if not candidates and (aside := sorted(p.name for p in directory.glob("corrupt-step*"))):
        raise UserError(
            f"no intact checkpoint to resume from in {directory}: {', '.join(aside)} set aside as damaged before. "
            "Move the checkpoints folder aside to start afresh (this run would otherwise start from step 0 "
            "beside them), or restore the files."
        )
    damaged: list[str] = []
    for tag in candidates:
        found = integrity.problems(directory / tag, hashes=hashes, distributed=distributed)
        if not found:
            if damaged and talk:
                print(
                    f"warning: resuming from {directory / tag}, the newest intact checkpoint; set aside as damaged: "
                    + "; ".join(damaged),
                    file=sys.stderr,
                    flush=True,
                )
            return tag
        aside = _aside(directory, tag)
        barrier()  # every rank has named it before rank 0 moves it
        if not distributed or dist.get_rank() == 0:
            (directory / tag).rename(aside)
        damaged.append(f"{aside} ({'; '.join(found[:3])}{' ...' if len(found) > 3 else ''})")
        barrier()
    if damaged:
        raise UserError(
            "no intact checkpoint to resume from: "
            + "; ".join(damaged)
            + ". Move the checkpoints folder aside to start afresh, or restore the files."
        )
    return None


def save(engine, directory: str | Path, step: int, state: dict, keep_last: int, resolved_config: str) -> Path:
    """Collective: every rank calls it."""
    directory = Path(directory)
    tag = tag_for(step)
    try:
        engine.save_checkpoint(
            str(directory), tag=tag, client_state={"trainer": {**state, "rng": rng_state()}}, save_latest=False
        )
    except (OSError, RuntimeError) as exc:
        if out_of_space(exc, directory):
            raise UserError(
                f"no space left on device: {directory / tag} (saving step {step}); free space or set "
                "checkpoint.dir elsewhere, then rerun: training resumes from the last complete "
                "checkpoint, the partial one is ignored"
            ) from None
        raise
    folder = directory / tag
    if dist.get_rank() == 0:
        atomic_write_text(folder / STATE, json.dumps(state, indent=2))
        atomic_write_text(folder / CONFIG, resolved_config)
    barrier()
    integrity.record(folder, distributed=True)  # sizes and sha256 of every file, before the marker
    if dist.get_rank() == 0:
        atomic_write_text(folder / COMPLETE, "")
        atomic_write_text(directory / LATEST, tag)
        for old in complete_tags(directory)[:-keep_last]:
            shutil.rmtree(directory / old, ignore_errors=True)
    barrier()
    return directory / tag


class SafeLoads:
    """DeepSpeed's checkpoint engine with its ``load`` (``torch.load(weights_only=False)``: any
    pickle runs) replaced by the converters' ``safe_load``: ``weights_only=True`` with DeepSpeed's
    plain data classes allowed, so a planted payload in a handed-over run folder is refused, naming
    the file, and never runs. Saving is DeepSpeed's own."""

    def __init__(self, inner):
        self.inner = inner

    def load(self, path: str, map_location=None):
        return safe_load(Path(path), mmap=False)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def load(engine, directory: str | Path, tag: str) -> dict:
    """Collective: restore the engine at ``tag`` (nothing unpickled beyond tensors and plain data);
    returns the trainer state saved with it."""
    if not isinstance(engine.checkpoint_engine, SafeLoads):
        engine.checkpoint_engine = SafeLoads(engine.checkpoint_engine)
    path, client = engine.load_checkpoint(
        str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise UserError(f"{Path(directory) / tag}: DeepSpeed could not load this checkpoint")
    state = client["trainer"]
    restore_rng(state.pop("rng"))
    return state


def check_compatible(saved: dict, expected: dict, where: Path, ignore: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint whose model, ParScale or parallel layout differs from the config's."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r}, config {v!r}"
        for k, v in expected.items()
        if saved.get(k) != v and k not in ignore
    ]
    if diffs:
        hint = ""
        if any(k.startswith("parscale.streams") for k in expected if saved.get(k) != expected[k]):
            hint = "; to add ParScale streams to a dense checkpoint start a new run with train.init_from (portable)"
        elif any(k == "parallel.tensor_parallel_size" for k in expected if saved.get(k) != expected[k]):
            hint = f"; reshard it first: parscale convert reshard {where} NEW_RUN/checkpoints --tp {expected['parallel.tensor_parallel_size']}"
        elif saved.get("tokenizer.sha256") != expected.get("tokenizer.sha256"):
            hint = "; the data was prepared with another tokenizer than the one this run trained on: train on data of that tokenizer, or start a new run"
        raise UserError(f"{where}: does not match the config ({'; '.join(diffs)}){hint}")
