"""A start-up check that one micro-batch can fit: a sequence length that cannot (``seq_len:
400000`` asks for hundreds of GB) is refused before anything is built, naming the keys to change,
instead of ending in an allocation traceback minutes later.

The estimate is a lower bound, counting only the two allocations that grow fastest with the
sequence length: the dense attention mask the sdpa path builds (``micro_batch x T x (prefix + T)``
booleans, and a copy per stream for P > 1; flex builds a block mask of negligible size) and the float32 logits the loss reads
(``micro_batch x T x padded vocab / TP``). Weights, optimizer state and activations come on top."""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from ..config.job import JobConfig
from ..model.lm import padded_vocab_size

GB = 1024**3


@dataclass(frozen=True)
class MicroBatchMemory:
    mask_bytes: int
    logits_bytes: int

    @property
    def total(self) -> int:
        return self.mask_bytes + self.logits_bytes

    @classmethod
    def of(cls, cfg: JobConfig, seq_len: int, vocab: int, backend: str) -> MicroBatchMemory:
        model, batch, tp = cfg.model, cfg.parallel.micro_batch_size, cfg.parallel.tensor_parallel_size
        prefix = cfg.parscale.prefix_len if cfg.parscale.has_prefix else 0
        dense_mask = backend == "sdpa" and (model.document_attention or prefix > 0)
        copies = 1 + cfg.parscale.streams if cfg.parscale.streams > 1 else 1  # the mask, and one per stream
        mask = copies * batch * seq_len * (prefix + seq_len) if dense_mask else 0
        logits = batch * seq_len * (padded_vocab_size(vocab, model.pad_vocab_to_multiple_of, tp) // tp) * 4
        return cls(mask, logits)


def free_memory(device: torch.device) -> int:
    """Bytes free for this process's tensors on ``device`` now."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def micro_batch_problem(cfg: JobConfig, seq_len: int, vocab: int, backend: str, device: torch.device) -> str | None:
    """Why one micro-batch of ``seq_len`` tokens cannot fit on ``device`` (None when it may)."""
    need, free = MicroBatchMemory.of(cfg, seq_len, vocab, backend), free_memory(device)
    if need.total <= free:
        return None
    parts = [f"{need.logits_bytes / GB:,.1f} GB of float32 logits"]
    if need.mask_bytes:
        parts.insert(0, f"{need.mask_bytes / GB:,.1f} GB of dense attention mask ({backend})")
    return (
        f"{seq_len} tokens per row need at least {' + '.join(parts)} per micro-batch of "
        f"{cfg.parallel.micro_batch_size}, more than the {free / GB:,.1f} GB free on {device}: lower "
        "packing.seq_len (and prepare the data again) or parallel.micro_batch_size"
    )
