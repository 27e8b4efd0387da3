"""Micro-batches for one data-parallel rank: global sample order -> this rank's slice -> padded
input/label tensors with loss mask and document segment ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.manifest import ManifestError, read_manifest
from data_prep.text_tokenizer import padding_id
from data_prep.tokenizer import TokenizerInfo
from data_prep.verify import dataset_problems

from ..config.job import JobConfig
from ..config.training import VERIFY_SHA256_UP_TO, BlendEntry
from ..errors import UserError
from .blend import BlendedOrder
from .packed import SourceRows, open_sources


@dataclass
class Batch:
    input_ids: torch.Tensor  # [b, T]
    labels: torch.Tensor  # [b, T]
    loss_mask: torch.Tensor  # [b, T] 1 where the label is a real token
    segment_ids: torch.Tensor | None  # [b, T] document ids, or None without document attention

    def to(self, device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.loss_mask), move(self.segment_ids))

    @property
    def tokens(self) -> int:
        return int(self.loss_mask.sum())


def collate(rows: list[tuple[np.ndarray, list[int]]], seq_len: int, pad_id: int, documents: bool) -> Batch:
    width = seq_len + 1
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, lengths) in enumerate(rows):
        n = min(len(row), width)
        tokens[i, :n] = torch.from_numpy(row[:n].astype(np.int64))
        ids = np.repeat(np.arange(len(lengths)), lengths)[:n]
        segments[i, :n] = torch.from_numpy(ids)
        segments[i, n:] = len(lengths)  # padding: a segment of its own
        tokens[i, n:] = pad_id
    valid = torch.arange(width)[None, :] < torch.tensor([min(len(r), width) for r, _ in rows])[:, None]
    return Batch(
        input_ids=tokens[:, :-1],
        labels=tokens[:, 1:].clone(),
        loss_mask=valid[:, 1:].float(),
        segment_ids=segments[:, :-1] if documents else None,
    )


def dataset_entries(cfg: JobConfig) -> list[BlendEntry]:
    """The prepared datasets a job trains on: ``train.datasets``, or ``data.output_dir`` alone."""
    if cfg.train is not None and cfg.train.datasets:
        return list(cfg.train.datasets)
    return [BlendEntry(path=cfg.data.output_dir, weight=1.0)]


def planned_seq_len(cfg: JobConfig) -> int:
    """The seq_len training will read: the first dataset's manifest once prepared; before that (a job
    that prepares its own data), the ``packing.seq_len`` its prep will write."""
    try:
        return read_manifest(dataset_entries(cfg)[0].path)["seq_len"]
    except ManifestError:
        return cfg.packing.seq_len


@dataclass(frozen=True)
class DataSpec:
    """What the model and the batches take from the prepared data (the first dataset's manifest;
    SplitStream refuses datasets that disagree with it)."""

    path: Path
    seq_len: int
    tokenizer: TokenizerInfo  # its files are in ``path``

    @classmethod
    def of(cls, cfg: JobConfig) -> DataSpec:
        path = Path(dataset_entries(cfg)[0].path)
        manifest = read_manifest(path)
        return cls(path, manifest["seq_len"], TokenizerInfo.from_dict(manifest["tokenizer"]))

    @property
    def tokenizer_vocab(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def pad_id(self) -> int:
        """Padding id of the batches: the tokenizer's pad, or 0 when it has none."""
        return padding_id(self.tokenizer.pad_id)

    def vocab_size(self, cfg: JobConfig) -> int:
        """The model's vocabulary: ``model.vocab_size``, or the tokenizer's when unset."""
        return cfg.model.vocab_size or self.tokenizer_vocab

    def collate(self, rows: list[tuple[np.ndarray, list[int]]], cfg: JobConfig) -> Batch:
        return collate(rows, self.seq_len, self.pad_id, cfg.model.document_attention)


class EmptySplit(UserError):
    """A split of the configured datasets without a single row."""


def _reject_summary(directory: str | Path) -> str:
    totals = read_manifest(directory)["totals"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(totals["rejected_by_reason"].items())) or "none"
    return (
        f"{directory} ({totals['documents_read']} documents read, {totals['documents_kept']} kept; "
        f"rejected by reason: {reasons})"
    )


_CHECKED: set[tuple[str, bool]] = set()


def shard_bytes(directory: str | Path) -> int:
    """Bytes of every shard (.bin and .idx) the manifest of ``directory`` lists."""
    return sum(
        shard.get("bin_bytes", 0) + shard.get("idx_bytes", 0)
        for source in read_manifest(directory)["sources"]
        for split in source["splits"].values()
        for shard in split["shards"]
    )


def verifies_hashes(directory: str | Path, verify: str) -> bool:
    """Whether ``train.verify_data: verify`` reads every shard's sha256 for the dataset ``directory``."""
    return verify == "sha256" or (verify == "auto" and shard_bytes(directory) <= VERIFY_SHA256_UP_TO)


def check_dataset(directory: str | Path, hashes: bool) -> None:
    """Refuse a prepared dataset whose files differ from its manifest, naming them and the repair
    (once per process and dataset)."""
    key = (str(Path(directory).resolve()), hashes)
    if key in _CHECKED:
        return
    if found := dataset_problems(directory, hashes):
        tokenizer = any("tokenizer" in Path(line.split(":")[0]).name for line in found)
        repair = (
            "The tokenizer the data was made with is damaged or gone: restore its files (every portable "
            "checkpoint trained on this data carries a copy, with the same sha256), or prepare the data again "
            "into a new data.output_dir."
            if tokenizer
            else "Rerun 'parscale prep' with the config that prepared it: it rewrites every shard whose checksum "
            "no longer matches."
        )
        raise UserError(
            f"{directory}: the prepared data does not match its manifest: {'; '.join(found[:5])}"
            f"{f' (and {len(found) - 5} more)' if len(found) > 5 else ''}. {repair}"
        )
    _CHECKED.add(key)


class SplitStream:
    """The rows of one split of the configured datasets, blended in a deterministic global order."""

    def __init__(self, cfg: JobConfig, split: str, total_samples: int, seed: int):
        entries = dataset_entries(cfg)
        self.sources: list[SourceRows] = []
        weights: list[float] = []
        tokenizer = None
        seq_len = None
        for entry in entries:
            check_dataset(
                entry.path, hashes=cfg.train is not None and verifies_hashes(entry.path, cfg.train.verify_data)
            )
            manifest = read_manifest(entry.path)
            sha = manifest["tokenizer"]["sha256"]
            tokenizer = tokenizer or sha
            seq_len = seq_len or manifest["seq_len"]
            if manifest["seq_len"] != seq_len:
                raise UserError(
                    f"{entry.path}: packed to seq_len {manifest['seq_len']}, the first dataset to {seq_len}"
                )
            opened = open_sources(entry.path, split, tokenizer)
            total_weight = sum(w for _, w in opened) or 1.0
            for rows, w in opened:
                self.sources.append(rows)
                weights.append(entry.weight * w / total_weight)
        if not self.sources:
            raise EmptySplit(f"no {split} rows in " + "; ".join(_reject_summary(e.path) for e in entries))
        self.tokenizer_sha256 = tokenizer
        self.order = BlendedOrder([len(s) for s in self.sources], weights, total_samples, seed)

    def rows(self, start: int, count: int) -> list[tuple[np.ndarray, list[int]]]:
        out = []
        for g in range(start, start + count):
            source, row = self.order[g]
            out.append(self.sources[source].row(row))
        return out


def micro_batch_start(step: int, micro: int, dp_rank: int, global_batch: int, micro_batch: int, dp: int) -> int:
    """Global sample index of this rank's ``micro``-th micro-batch of ``step``: every step takes the
    next ``global_batch`` samples; micro-batch m of the step is split across DP ranks in order."""
    return step * global_batch + micro * micro_batch * dp + dp_rank * micro_batch
