"""Second half of a prep job, in the driver, while the first (tokenization) goes on: stream the
tokenized units of each source in order, drop exact duplicates, split train/validation by content
hash, pack, and write shards."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pipeline.config.job import JobConfig
from pipeline.utils.fs import atomic_write_text

from .filters import DUPLICATE, is_validation
from .packing import make_packer
from .rejects import RejectLog
from .shards import ShardWriter
from .tokenize_units import UnitResult
from .units import SourcePlan, WorkUnit

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


class SourcePacker:
    """One source's packing, fed its units one by one in plan order."""

    def __init__(
        self,
        plan: SourcePlan,
        index: int,
        cfg: JobConfig,
        out: Path,
        work: Path,
        dtype: np.dtype,
        progress: ShardProgress,
        seen: set[int] | None,
    ):
        self.plan, self.src, self.work, self.seen = plan, cfg.data.sources[index], work, seen
        self.val_fraction = cfg.data.val_fraction
        self.row_len = cfg.packing.seq_len + 1
        self.packers = {s: make_packer(cfg.packing.strategy, self.row_len, cfg.packing.best_fit_window) for s in SPLITS}
        self.writers = {
            s: ShardWriter(
                out, f"{s}/{plan.name}", dtype, cfg.packing.sequences_per_shard, progress.done, progress.record
            )
            for s in SPLITS
        }
        self.rejected, self.stripped, self.read, self.kept = RejectLog(), RejectLog(), 0, 0

    def add(self, unit: WorkUnit) -> None:
        result = UnitResult.load(unit_path(self.work, unit.key))
        self.read += result.read
        self.rejected.merge(result.rejected)
        self.stripped.merge(result.stripped)
        ends = np.cumsum(result.lengths).tolist()
        for end, length, doc_hash, where in zip(
            ends, result.lengths.tolist(), result.hashes.tolist(), result.wheres, strict=True
        ):
            if self.seen is not None:
                if doc_hash in self.seen:
                    self.rejected.note(DUPLICATE, where)
                    continue
                self.seen.add(doc_hash)
            self.kept += 1
            split = "val" if is_validation(doc_hash, self.val_fraction) else "train"
            writer = self.writers[split]
            for row in self.packers[split].add(result.tokens[end - length : end]):
                writer.add(row)

    def finish(self) -> dict:
        """Flush the last rows and shards; the source's manifest entry."""
        splits = {}
        for s in SPLITS:
            for row in self.packers[s].flush():
                self.writers[s].add(row)
            shards = self.writers[s].close()
            stats = self.packers[s].stats
            splits[s] = {
                **stats.as_dict(),
                "padding_fraction": stats.padding / (stats.rows * self.row_len) if stats.rows else 0.0,
                "shards": shards,
            }
        return {
            "name": self.plan.name,
            "type": self.src.type,
            "weight": self.src.weight,
            "units": len(self.plan.units),
            "documents": {"read": self.read, "kept": self.kept, "rejected": self.rejected.total},
            "rejected": self.rejected.to_dict(),
            "stripped": self.stripped.to_dict(),
            "splits": splits,
        }


class PackStage:
    """Every source packed in plan order while tokenization goes on: units are tokenized in any
    order, and each is packed as soon as it and every unit before it are ready, so the outputs are
    those of packing after tokenization, source by source; a source is finished (its last shards
    written) as soon as its last unit is packed."""

    def __init__(
        self,
        plans: list[SourcePlan],
        cfg: JobConfig,
        out: Path,
        work: Path,
        dtype: np.dtype,
        seen: set[int] | None,
        advance: Callable[[int], None],
    ):
        progress = ShardProgress(work)
        self.packers = [SourcePacker(p, i, cfg, out, work, dtype, progress, seen) for i, p in enumerate(plans)]
        self.order = [(i, u) for i, p in enumerate(plans) for u in p.units]
        self.advance = advance
        self.waiting: set[str] = set()
        self.next = 0  # position in ``order`` of the next unit to pack
        self.entries: list[dict] = []  # of the sources finished, in order
        self._finish_before(self._source_of_next())

    def _source_of_next(self) -> int:
        return self.order[self.next][0] if self.next < len(self.order) else len(self.packers)

    def _finish_before(self, source: int) -> None:
        """Finish the sources before ``source`` not finished yet (a source without units too)."""
        while len(self.entries) < source:
            self.entries.append(self.packers[len(self.entries)].finish())

    def ready(self, keys: Iterable[str]) -> None:
        """These units are tokenized (their results saved): pack what can be packed now."""
        self.waiting.update(keys)
        while self.next < len(self.order) and self.order[self.next][1].key in self.waiting:
            source, unit = self.order[self.next]
            self.waiting.discard(unit.key)
            self.packers[source].add(unit)
            self.advance(unit.size)
            self.next += 1
            self._finish_before(self._source_of_next())

    def finish(self) -> list[dict]:
        """Every source's manifest entry; every unit must have been packed."""
        if self.next != len(self.order):
            raise RuntimeError(f"unit {self.order[self.next][1].key} was never tokenized")
        return self.entries
