"""Evaluation, one for the trainer and for ``parscale eval`` of a portable checkpoint: the mean
loss over the first ``eval.max_batches`` micro-batches of the validation split (dealt over the
data-parallel ranks, every token weighted once) and, for P > 1, the stream diagnostics: spread,
merge weights, the prefixes' pairwise cosine (and of their updates) and the diversity gain."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checkpoint.portable import CheckpointError, load_portable, tokenizer_info
from ..config import LoadedConfig
from ..config.job import JobConfig
from ..data.loader import Batch, DataSpec, EmptySplit, SplitStream, collate
from ..distributed import preferred_device, single_process
from ..model.flex import set_attention_backend
from ..model.stream_stats import StreamStats, mean_pairwise_cosine, mean_prefix, stream_vectors
from ..utils import collectives
from .init_vocab import tokenizer_problem

Forward = Callable[[Batch, bool], object]  # (batch, return stream states) -> the model's output
MakeBatch = Callable[[int, int], Batch]  # (first row, rows) -> a batch on the device


def validation_rows(cfg: JobConfig, seed: int) -> SplitStream:
    """The validation rows every evaluation reads: ``eval.max_batches`` micro-batches of the split."""
    return SplitStream(cfg, "val", cfg.eval.max_batches * cfg.parallel.micro_batch_size, seed)


@dataclass(frozen=True)
class Ranks:
    """Where an evaluation runs: this rank's DP index among ``dp_size``, the groups it reduces over."""

    device: str
    dp_rank: int = 0
    dp_size: int = 1
    dp_group: object = None  # None: a single process (nothing to reduce)
    tp_group: object = None


def loss_pass(
    forward: Forward, make_batch: MakeBatch, batches: int, micro: int, ranks: Ranks, stats: StreamStats | None = None
) -> tuple[float, int]:
    """(mean per-token loss, tokens) over micro-batches 0..batches-1, rank r taking r, r + dp_size, ...
    Every rank runs as many forwards (ZeRO 3 gathers parameters in them); one past the end counts
    nothing. The sums stay on the device and are reduced once at the end."""
    total = torch.zeros(2, dtype=torch.float64, device=ranks.device)  # loss x tokens, tokens
    with torch.no_grad():
        for b in range(math.ceil(batches / ranks.dp_size)):
            index = b * ranks.dp_size + ranks.dp_rank
            batch = make_batch(min(index, batches - 1) * micro, micro)
            out = forward(batch, stats is not None)
            mask = batch.loss_mask * (index < batches)
            tokens = mask.sum().double()
            total += torch.stack([out.loss.double() * tokens, tokens])
            if stats is not None:
                stats.add(out.stream_states, out.stream_weights, mask)
    if ranks.dp_group is not None:
        collectives.all_reduce(total, "sum", ranks.dp_group)
    loss_sum, tokens = total.tolist()
    return loss_sum / max(tokens, 1.0), int(tokens)


class PrefixDrift:
    """The streams' prefixes: their mean pairwise cosine, and that of their change since the first
    call (``update_cosine``: whether the streams move apart or together)."""

    def __init__(self, zero_stage: int = 0):
        self.zero_stage = zero_stage
        self.start: torch.Tensor | None = None

    def __call__(self, module, tp_group=None) -> dict:
        import deepspeed

        params = [p for layer in module.model.layers for p in layer.self_attn.prefix.parameters()]
        gather = deepspeed.zero.GatheredParameters(params) if self.zero_stage == 3 else contextlib.nullcontext()
        with gather:
            vectors = stream_vectors(module)
        out = {"prefix_cosine": mean_pairwise_cosine(vectors, tp_group)}
        if self.start is None:
            self.start = vectors
        else:
            out["update_cosine"] = mean_pairwise_cosine(vectors - self.start, tp_group)
        return out


def evaluate_model(
    module, forward: Forward, make_batch: MakeBatch, cfg: JobConfig, ranks: Ranks, drift: PrefixDrift
) -> dict:
    """The validation loss of ``module`` (in eval mode) and, for P > 1, its stream diagnostics."""
    batches, micro = cfg.eval.max_batches, cfg.parallel.micro_batch_size
    stats = StreamStats(module.streams, ranks.device) if module.streams > 1 else None
    loss, tokens = loss_pass(forward, make_batch, batches, micro, ranks, stats)
    result = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "tokens": tokens}
    if stats is not None:
        result |= stats.result(ranks.dp_group) | drift(module, ranks.tp_group)
        if cfg.eval.stream_diagnostics:
            with mean_prefix(module):
                result["diversity_gain"] = loss_pass(forward, make_batch, batches, micro, ranks)[0] - loss
    return result


def evaluate_portable(
    loaded: LoadedConfig,
    checkpoint: str,
    max_batches: int | None = None,
    attention_backend: str = "auto",
    device: str | None = None,
) -> dict:
    """``evaluate_model`` of a portable checkpoint, in this process, on the config's validation rows,
    its attention ``attention_backend`` (``parscale eval --attention-backend``), on ``device``
    (default: a GPU where one is visible)."""
    cfg = loaded.config
    if max_batches:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_batches": max_batches})})
    spec = DataSpec.of(cfg)
    try:
        problem = tokenizer_problem(checkpoint, tokenizer_info(checkpoint), spec)
    except CheckpointError as exc:
        problem = str(exc)
    if problem:
        raise loaded.error("data.output_dir", problem)
    try:
        rows = validation_rows(cfg, cfg.run.seed + 1)
    except EmptySplit as exc:
        raise loaded.error("data.val_fraction", f"no validation rows to evaluate on: {exc}") from None
    with single_process(seed=cfg.run.seed, device=device or preferred_device()) as ctx:
        model, meta = load_portable(checkpoint)
        model.to(ctx.device).eval()
        set_attention_backend(model, attention_backend, ctx.device, "--attention-backend")
        document_attention = model.config.document_attention  # the checkpoint's model, not the config's

        def make_batch(start: int, count: int) -> Batch:
            return collate(rows.rows(start, count), spec.seq_len, spec.pad_id, document_attention).to(ctx.device)

        def forward(batch: Batch, stream_states: bool):
            return model(
                batch.input_ids,
                labels=batch.labels,
                loss_mask=batch.loss_mask,
                segment_ids=batch.segment_ids,
                return_stream_states=stream_states,
            )

        result = evaluate_model(model, forward, make_batch, cfg, Ranks(ctx.device), PrefixDrift())
    return {
        "checkpoint": str(checkpoint),
        **result,
        "streams": meta["parscale"]["streams"],
        "tokens_seen": meta.get("tokens_seen"),
        **({} if model.streams > 1 else {"stream_spread": None}),
    }
