"""``parscale eval``: validation loss and perplexity of a portable checkpoint on the held-out split
of the prepared data named in the config."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .common import add_config_args, load_from_args


def evaluate_portable(loaded, checkpoint: str, max_batches: int | None = None) -> dict:
    """Mean per-token loss over the validation rows (``eval.max_batches`` micro-batches); for P > 1
    also the stream statistics, the prefixes' pairwise cosine and (``eval.stream_diagnostics``) the
    diversity gain."""
    import torch

    from data_prep.manifest import read_manifest

    from ..checkpoint.portable import load_portable
    from ..model.stream_stats import StreamStats, mean_pairwise_cosine, mean_prefix, stream_vectors
    from ..data.loader import EmptySplit, SplitStream, collate, dataset_entries
    from ..distributed import single_process

    cfg = loaded.config
    data_dir = dataset_entries(cfg)[0].path
    manifest = read_manifest(data_dir)
    micro = cfg.parallel.micro_batch_size
    batches = max_batches or cfg.eval.max_batches
    try:
        stream = SplitStream(cfg, "val", batches * micro, cfg.run.seed + 1)
    except EmptySplit as exc:
        raise loaded.error("data.val_fraction", f"no validation rows to evaluate on: {exc}") from None
    with single_process(seed=cfg.run.seed) as ctx:
        model, meta = load_portable(checkpoint)
        model.to(ctx.device).eval()
        stats = StreamStats(model.streams, ctx.device) if model.streams > 1 else None

        def loss_pass(stats=None) -> tuple[float, int]:
            total, tokens = 0.0, 0
            with torch.no_grad():
                for b in range(batches):
                    batch = collate(stream.rows(b * micro, micro), manifest["seq_len"],
                                    max(manifest["tokenizer"]["pad_id"], 0), model.config.document_attention).to(ctx.device)
                    out = model(batch.input_ids, labels=batch.labels, loss_mask=batch.loss_mask,
                                segment_ids=batch.segment_ids, return_stream_states=stats is not None)
                    total += out.loss.item() * batch.tokens
                    tokens += batch.tokens
                    if stats is not None:
                        stats.add(out.stream_states, out.stream_weights, batch.loss_mask)
            return total / max(tokens, 1), tokens

        loss, tokens = loss_pass(stats)
        streams = {"stream_spread": None}
        if stats is not None:
            streams = stats.result() | {"prefix_cosine": mean_pairwise_cosine(stream_vectors(model))}
            if cfg.eval.stream_diagnostics:
                with mean_prefix(model):
                    streams["diversity_gain"] = loss_pass()[0] - loss
    return {"checkpoint": str(checkpoint), "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "tokens": tokens,
            "streams": meta["parscale"]["streams"], "tokens_seen": meta.get("tokens_seen"), **streams}


def _run(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    checkpoint = args.checkpoint or str(Path(loaded.config.run.output_dir) / "portable")
    result = evaluate_portable(loaded, checkpoint, args.max_batches)
    print(json.dumps(result, indent=2))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="validation loss / perplexity of a checkpoint",
        description="Evaluate a portable checkpoint on the held-out split of the prepared data named in the config "
                    "(data.output_dir or train.datasets); prints JSON.",
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="portable checkpoint folder (default: <run.output_dir>/portable)")
    parser.add_argument("--max-batches", type=int, help="micro-batches to evaluate (default: eval.max_batches)")
    parser.set_defaults(func=_run)
