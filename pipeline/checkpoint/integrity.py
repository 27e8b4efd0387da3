"""What a checkpoint folder held when it was saved: ``files.json`` records every file's size and
sha256, written before the folder's ``COMPLETE`` marker. Checking it finds a truncated, missing or
flipped file before anything loads it. Hashing is split over the ranks of a distributed job (rank r
hashes every world-th file), so a large checkpoint costs each rank its share only."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from ..utils import collectives
from ..utils.fs import atomic_write_text, file_sha256
from .step_folders import COMPLETE

FILES = "files.json"
#: written after the record (the completion marker) or never hashed (the record itself)
UNRECORDED = (COMPLETE, FILES)


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in UNRECORDED and not p.name.startswith(".")
    )


def _share(names: list[str], distributed: bool) -> list[str]:
    if not distributed:
        return names
    return names[dist.get_rank() :: dist.get_world_size()]


def _gather(part: dict, distributed: bool) -> dict:
    if not distributed:
        return part
    merged: dict = {}
    for piece in collectives.all_gather_object(part):
        merged.update(piece)
    return merged


def record(folder: str | Path, distributed: bool = False) -> dict:
    """Hash every file of ``folder`` (collective when ``distributed``); rank 0 (or the only process)
    writes ``files.json``. Returns the record."""
    folder = Path(folder)
    names = _files(folder)
    mine = {
        n: {"size": (folder / n).stat().st_size, "sha256": file_sha256(folder / n)} for n in _share(names, distributed)
    }
    files = _gather(mine, distributed)
    if not distributed or dist.get_rank() == 0:
        atomic_write_text(folder / FILES, json.dumps({"format": "parscale-files-v1", "files": files}, indent=1))
    return files


def problems(folder: str | Path, hashes: bool = True, distributed: bool = False) -> list[str]:
    """Files of ``folder`` that differ from its record: missing, another size, or (``hashes``)
    another sha256, one line each naming the file. A folder without its record is a problem too:
    every checkpoint this pipeline writes has one (written before the folder's ``COMPLETE``), so
    its absence means a copy that lost it or a folder made elsewhere, and nothing in it can be
    trusted. Collective when ``distributed``: every rank gets the same answer."""
    folder = Path(folder)
    try:
        files = json.loads((folder / FILES).read_text())["files"]
    except FileNotFoundError:
        return [f"{folder / FILES}: missing (no record of the files' sizes and sha256 to check them against)"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{folder / FILES}: unreadable record ({exc})"]
    found: list[str] = []
    for name in _share(sorted(files), distributed):
        path, want = folder / name, files[name]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            found.append(f"{path}: missing")
            continue
        if size != want["size"]:
            found.append(f"{path}: {size} bytes, {want['size']} when saved (truncated or overwritten)")
        elif hashes and file_sha256(path) != want["sha256"]:
            found.append(f"{path}: sha256 differs from the one recorded at save (corrupt)")
    if distributed:
        found = [line for part in collectives.all_gather_object(found) for line in part]
    return sorted(found)


__all__ = ["FILES", "problems", "record"]
