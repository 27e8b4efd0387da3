"""What a training run reads: the prepared data's spec (seq_len, vocabulary, pad id), checked
against the model config, the training rows in their deterministic blended order, the validation
rows evaluations read, and the step count the token budget gives."""

from __future__ import annotations

from dataclasses import dataclass

from ..checkpoint.portable import CheckpointError, read_config
from ..config.errors import ErrorAt
from ..config.job import JobConfig
from ..config.training import TrainConfig
from ..data.loader import Batch, DataSpec, EmptySplit, SplitStream, micro_batch_start
from . import init_vocab
from .evaluation import validation_rows


def skip_tokens(train: TrainConfig) -> int:
    """Where a run starts in the data order, in tokens: ``train.skip_tokens`` if given; else the
    ``tokens_seen`` that ``train.init_from``'s config.json records (stage 2, by ``parscale run`` or
    by hand, reads on after stage 1's data; ``to-parscale`` carries it over); else 0."""
    if train.skip_tokens is not None:
        return train.skip_tokens
    if not train.init_from:
        return 0
    return int(read_config(train.init_from).get("tokens_seen") or 0)


@dataclass
class RunData:
    spec: DataSpec
    vocab: int  # the model's vocabulary (model.vocab_size, or train.init_from's, or the tokenizer's)
    tokens_per_step: int
    total_steps: int
    skip_rows: int  # rows of the data order before this run's first (train.skip_tokens)
    train: SplitStream
    val: SplitStream | None  # None: no validation split, training runs without evaluation
    init: init_vocab.InitVocab | None = None  # train.init_from's vocabulary and the model's

    @classmethod
    def build(cls, cfg: JobConfig, error_at: ErrorAt) -> RunData:
        spec = DataSpec.of(cfg)
        if "seq_len" in cfg.packing.model_fields_set and cfg.packing.seq_len != spec.seq_len:
            raise error_at(
                "packing.seq_len",
                f"{cfg.packing.seq_len}, but {spec.path} was packed to {spec.seq_len} and training reads its rows: "
                f"set packing.seq_len: {spec.seq_len}, or prepare the data again with this one",
            )
        if spec.seq_len > cfg.model.max_seq_len:
            raise error_at("model.max_seq_len", f"{cfg.model.max_seq_len} is below the data's seq_len {spec.seq_len}")
        init = init_vocab.plan(cfg, spec, error_at)
        vocab = init.rows if init is not None else spec.vocab_size(cfg)
        if vocab < spec.tokenizer_vocab:
            raise error_at("model.vocab_size", f"{vocab} is below the tokenizer's {spec.tokenizer_vocab}")
        par = cfg.parallel
        tokens_per_step = par.global_batch_size * spec.seq_len
        total_steps = cfg.train.steps(tokens_per_step)
        try:
            skip_rows = skip_tokens(cfg.train) // spec.seq_len
        except CheckpointError as exc:
            raise error_at("train.init_from", str(exc)) from None
        train = SplitStream(cfg, "train", skip_rows + total_steps * par.global_batch_size, cfg.run.seed)
        try:
            val = validation_rows(cfg, cfg.run.seed + 1)  # the rows parscale eval reads
        except EmptySplit:
            val = None
        return cls(spec, vocab, tokens_per_step, total_steps, skip_rows, train, val, init)

    def train_batch(self, cfg: JobConfig, step: int, micro: int, dp_rank: int, dp_size: int, device) -> Batch:
        """Micro-batch ``micro`` of optimizer step ``step`` for DP rank ``dp_rank`` (on ``device``)."""
        par = cfg.parallel
        start = self.skip_rows + micro_batch_start(
            step, micro, dp_rank, par.global_batch_size, par.micro_batch_size, dp_size
        )
        return self.batch(cfg, self.train, start, par.micro_batch_size, device)

    def batch(self, cfg: JobConfig, rows: SplitStream, start: int, count: int, device) -> Batch:
        return self.spec.collate(rows.rows(start, count), cfg).to(device)
