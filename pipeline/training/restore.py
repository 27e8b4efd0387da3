"""Where a run's weights come from before its first step: its own latest intact checkpoint
(resume; checked against the config before anything loads), a ``parscale convert reshard``
output (this TP rank's slices; Adam starts afresh), or ``train.init_from`` (a portable
checkpoint, new ParScale tensors keeping their initialisation), else the fresh initialisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import step_folders
from ..checkpoint.portable import read_config, read_weights
from ..checkpoint.sharding import load_full_state, load_rank_state
from ..checkpoint.trainer_ckpt import TrainerCheckpoint
from ..config.errors import ErrorAt
from ..config.job import JobConfig
from ..config.run_paths import RunPaths
from . import checkpointing as ckpt
from .init_vocab import InitVocab, grow_rows


def identity(cfg: JobConfig, vocab: int, tokenizer_sha256: str) -> dict:
    """What a checkpoint must agree with to be resumed by this config (and data: its tokenizer)."""
    return {
        "tokenizer.sha256": tokenizer_sha256,
        "model": cfg.model.identity(),
        "parscale.streams": cfg.parscale.streams,
        "parscale.prefix_len": cfg.parscale.prefix_len,
        "parscale.prefix_init": cfg.parscale.prefix_init,
        "parscale.trainable": cfg.parscale.trainable,
        "parallel.tensor_parallel_size": cfg.parallel.tensor_parallel_size,
        "parallel.zero_stage": cfg.parallel.zero_stage,
        "vocab_size": vocab,
        **({"parscale.single_prefix": True} if cfg.parscale.single_prefix else {}),
    }


def checkpoint_dir(cfg: JobConfig) -> Path:
    return RunPaths.of(cfg).checkpoints


@dataclass(frozen=True)
class Restore:
    """The checkpoint a run resumes from (None: a new run) and how to put it back."""

    directory: Path
    tag: str | None
    resharded: bool

    @classmethod
    def find(cls, cfg: JobConfig, expected: dict) -> Restore:
        """The newest intact checkpoint (damaged ones set aside), refused if it disagrees with ``expected``."""
        directory = checkpoint_dir(cfg)
        tag = None
        if cfg.checkpoint.resume:
            tag = ckpt.intact_tag(directory, hashes=cfg.checkpoint.verify_on_resume == "sha256")
        resharded = tag is not None and step_folders.is_resharded(directory / tag)
        if tag is not None:
            folder = directory / tag
            saved = step_folders.read_state(folder)["identity"]
            ignore = ("parallel.zero_stage",) if resharded else ()
            if "tokenizer.sha256" not in saved:  # saved before the record: its data cannot be checked
                ignore += ("tokenizer.sha256",)
            ckpt.check_compatible(saved, expected, folder, ignore=ignore)
        return cls(directory, tag, resharded)

    def weights(
        self,
        model: torch.nn.Module,
        cfg: JobConfig,
        tp_rank: int,
        vocab: InitVocab | None,
        error_at: ErrorAt,
        is_main: bool,
    ) -> None:
        """Before the engine exists: a resharded checkpoint's slices, or ``train.init_from``'s weights
        for a new run."""
        if self.resharded:
            folder = self.directory / self.tag
            load_rank_state(model, TrainerCheckpoint(folder).rank_state(tp_rank), str(folder))
        elif cfg.train.init_from and self.tag is None:
            init_from(model, cfg, cfg.train.init_from, vocab, error_at, is_main)

    def engine_state(self, engine, is_main: bool) -> tuple[int, int]:
        """After the engine exists: (step, skipped steps) of the checkpoint, the engine restored
        (weights, optimizer, RNG) unless it was resharded."""
        folder = self.directory / self.tag
        if self.resharded:
            saved = step_folders.read_state(folder)
            note = " (resharded: weights, step and data position restored; Adam moments start afresh)"
        else:
            saved, note = ckpt.load(engine, self.directory, self.tag), ""
        if is_main:
            print(f"resumed from {folder} at step {saved['step']}{note}", flush=True)
        return saved["step"], saved["skipped"]


def init_from(
    model: torch.nn.Module, cfg: JobConfig, source: str, vocab: InitVocab, error_at: ErrorAt, is_main: bool
) -> None:
    """Load ``source``'s weights (its vocabulary grown as ``vocab`` says, already checked against the data)."""
    meta = read_config(source)
    if meta["model"] != cfg.model.identity() | {"vocab_size": meta["model"].get("vocab_size")}:
        diffs = [k for k, v in meta["model"].items() if k != "vocab_size" and getattr(cfg.model, k) != v]
        if diffs:
            raise error_at("train.init_from", f"{source} has a different model shape ({', '.join(diffs)})")
    state = grow_rows(read_weights(source), vocab.rows)
    new = load_full_state(model, state, source, allow_new_parscale=cfg.parscale.has_prefix)
    if is_main:
        grown = f", vocabulary {vocab.checkpoint_rows} -> {vocab.rows} rows (+{vocab.added} at the mean embedding)"
        print(
            f"initialised from {source}"
            + (f" (+{len(new)} new ParScale tensors)" if new else "")
            + (grown if vocab.added else ""),
            flush=True,
        )
