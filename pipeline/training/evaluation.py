"""The validation loss loop, one for the trainer's evaluations and for ``parscale eval`` of a
portable checkpoint: the first ``eval.max_batches`` micro-batches of the validation split, dealt
over the data-parallel ranks, every token weighted once; stream statistics collected on the way."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import LoadedConfig
from ..data.loader import Batch, DataSpec, EmptySplit, SplitStream, collate
from ..model.stream_stats import StreamStats, mean_pairwise_cosine, mean_prefix, stream_vectors
from ..utils import collectives


def validation_rows(cfg, seed: int) -> SplitStream:
    """The validation rows both loops read: ``eval.max_batches`` micro-batches of the split."""
    return SplitStream(cfg, "val", cfg.eval.max_batches * cfg.parallel.micro_batch_size, seed)


def loss_pass(forward: Callable[[Batch, bool], object], make_batch: Callable[[int, int], Batch], batches: int,
              micro: int, device, dp_rank: int = 0, dp_size: int = 1, group=None,
              stats: StreamStats | None = None) -> tuple[float, int]:
    """(mean per-token loss, tokens) over micro-batches 0..batches-1, rank r taking r, r + dp_size, ...
    Every rank runs as many forwards (ZeRO 3 gathers parameters in them); one past the end counts
    nothing. ``forward(batch, stream_states)`` returns the model's output; the sums stay on the
    device and are reduced over ``group`` once at the end."""
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss x tokens, tokens
    with torch.no_grad():
        for b in range(math.ceil(batches / dp_size)):
            index = b * dp_size + dp_rank
            batch = make_batch(min(index, batches - 1) * micro, micro)
            out = forward(batch, stats is not None)
            mask = batch.loss_mask * (index < batches)
            tokens = mask.sum().double()
            total += torch.stack([out.loss.double() * tokens, tokens])
            if stats is not None:
                stats.add(out.stream_states, out.stream_weights, mask)
    if group is not None:
        collectives.all_reduce(total, "sum", group)
    loss_sum, tokens = total.tolist()
    return loss_sum / max(tokens, 1.0), int(tokens)


def evaluate_portable(loaded: LoadedConfig, checkpoint: str, max_batches: int | None = None) -> dict:
    """Mean per-token loss of a portable checkpoint over the validation rows (``eval.max_batches``
    micro-batches); for P > 1 also the stream statistics, the prefixes' pairwise cosine and
    (``eval.stream_diagnostics``) the diversity gain."""
    from ..checkpoint.portable import load_portable
    from ..distributed import single_process

    cfg = loaded.config
    if max_batches:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"max_batches": max_batches})})
    spec = DataSpec.of(cfg)
    micro, batches = cfg.parallel.micro_batch_size, cfg.eval.max_batches
    try:
        rows = validation_rows(cfg, cfg.run.seed + 1)
    except EmptySplit as exc:
        raise loaded.error("data.val_fraction", f"no validation rows to evaluate on: {exc}") from None
    with single_process(seed=cfg.run.seed) as ctx:
        model, meta = load_portable(checkpoint)
        model.to(ctx.device).eval()
        document_attention = model.config.document_attention

        def make_batch(start: int, count: int) -> Batch:
            return collate(rows.rows(start, count), spec.seq_len, spec.pad_id, document_attention).to(ctx.device)

        def forward(batch: Batch, stream_states: bool):
            return model(batch.input_ids, labels=batch.labels, loss_mask=batch.loss_mask,
                         segment_ids=batch.segment_ids, return_stream_states=stream_states)

        stats = StreamStats(model.streams, ctx.device) if model.streams > 1 else None
        loss, tokens = loss_pass(forward, make_batch, batches, micro, ctx.device, stats=stats)
        streams = {"stream_spread": None}
        if stats is not None:
            streams = stats.result() | {"prefix_cosine": mean_pairwise_cosine(stream_vectors(model))}
            if cfg.eval.stream_diagnostics:
                with mean_prefix(model):
                    streams["diversity_gain"] = loss_pass(forward, make_batch, batches, micro, ctx.device)[0] - loss
    return {"checkpoint": str(checkpoint), "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "tokens": tokens,
            "streams": meta["parscale"]["streams"], "tokens_seen": meta.get("tokens_seen"), **streams}
