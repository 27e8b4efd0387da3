"""Second half of a prep job, in the driver: stream the tokenized units of each source in order,
drop exact duplicates, split train/validation by content hash, pack, and write shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.config.job import JobConfig
from pipeline.utils.fs import atomic_write_text

from .filters import DUPLICATE, is_validation
from .packing import make_packer
from .rejects import RejectLog
from .shards import ShardWriter
from .tokenize_units import UnitResult
from .units import SourcePlan

SPLITS = ("train", "val")
PROGRESS_NAME = "shards.json"


def unit_path(work: Path, key: str) -> Path:
    return work / "units" / f"{key}.npz"


class ShardProgress:
    """Shards finished so far, saved after each one, so a rerun skips them."""

    def __init__(self, work: Path):
        self.path = work / PROGRESS_NAME
        self.done: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def record(self, entry: dict) -> None:
        self.done[entry["prefix"]] = entry
        atomic_write_text(self.path, json.dumps(self.done, indent=1))


def pack_source(
    plan: SourcePlan,
    index: int,
    cfg: JobConfig,
    out: Path,
    work: Path,
    dtype: np.dtype,
    progress: ShardProgress,
    seen: set[int] | None,
    advance,
) -> dict:
    """Pack one source; returns its manifest entry."""
    src = cfg.data.sources[index]
    row_len = cfg.packing.seq_len + 1
    packers = {s: make_packer(cfg.packing.strategy, row_len, cfg.packing.best_fit_window) for s in SPLITS}
    writers = {
        s: ShardWriter(out, f"{s}/{plan.name}", dtype, cfg.packing.sequences_per_shard, progress.done, progress.record)
        for s in SPLITS
    }
    rejected, stripped, read, kept = RejectLog(), RejectLog(), 0, 0
    for unit in plan.units:
        result = UnitResult.load(unit_path(work, unit.key))
        read += result.read
        rejected.merge(result.rejected)
        stripped.merge(result.stripped)
        ends = np.cumsum(result.lengths)
        for end, length, doc_hash, where in zip(
            ends, result.lengths, result.hashes.tolist(), result.wheres, strict=True
        ):
            if seen is not None:
                if doc_hash in seen:
                    rejected.note(DUPLICATE, where)
                    continue
                seen.add(doc_hash)
            kept += 1
            split = "val" if is_validation(doc_hash, cfg.data.val_fraction) else "train"
            for row in packers[split].add(result.tokens[end - length : end]):
                writers[split].add(row)
        advance(unit.size)
    splits = {}
    for s in SPLITS:
        for row in packers[s].flush():
            writers[s].add(row)
        shards = writers[s].close()
        stats = packers[s].stats
        splits[s] = {
            **stats.as_dict(),
            "padding_fraction": stats.padding / (stats.rows * row_len) if stats.rows else 0.0,
            "shards": shards,
        }
    return {
        "name": plan.name,
        "type": src.type,
        "weight": src.weight,
        "units": len(plan.units),
        "documents": {"read": read, "kept": kept, "rejected": rejected.total},
        "rejected": rejected.to_dict(),
        "stripped": stripped.to_dict(),
        "splits": splits,
    }
