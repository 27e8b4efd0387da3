"""Training step on one GPU: step time, tokens/s, MFU and peak memory of the dense preset and of
ParScale P = 2, 4, 8 on it, bf16, packed documents, for each attention backend, with and without
activation checkpointing, and the ratio to a plain eager PyTorch loop over the same model (SDPA
with a dense document mask, bf16 weights, torch AdamW, no DeepSpeed). All in one run.

    python benchmarks/gpu_step.py                       # 0.5B preset, seq 2048, P = 1,2,4,8, flex + sdpa
    python benchmarks/gpu_step.py --streams 1,4 --micro 4 --steps 20 --json out.json
    python benchmarks/gpu_step.py --max-micro           # also: the largest micro-batch that fits, per P

What runs: our model (megatron-core TP layers, TP = 1) inside a DeepSpeed engine (ZeRO stage
``--zero-stage``, bf16 with fp32 master weights, world size 1 over NCCL), the trainer's own engine
builder, on synthetic packed rows (documents of random lengths, mean ``--doc-len`` tokens). The data
pipeline is not part of the measure. MFU = model FLOPs per token (pipeline/model/counting.py: 6N
style, attention and prefix included, recomputation not counted) x tokens/s / ``--peak-tflops``
(default: the H100 SXM's dense bf16 datasheet peak, 989 TFLOP/s).

Needs CUDA; on a machine without it, exits 2 (``--allow-cpu`` runs the same code on a tiny model
on CPU, SDPA only, to check the script itself: its figures mean nothing).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 128,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "max_seq_len": 256,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_step.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=str(REPO / "configs" / "models" / "paper-0.5b.yaml"),
        help="a YAML file with a model: section (default: the 0.5B preset)",
    )
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    parser.add_argument("--streams", default="1,2,4,8", help="ParScale P values, comma-separated")
    parser.add_argument("--prefix-len", type=int, default=48)
    parser.add_argument("--backends", default="flex,sdpa", help="attention backends to measure")
    parser.add_argument(
        "--checkpointing", choices=["off", "on", "both"], default="both", help="activation checkpointing"
    )
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--doc-len", type=int, default=512, help="mean document length in a packed row")
    parser.add_argument("--zero-stage", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak per GPU (H100: 989)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain PyTorch loop")
    parser.add_argument("--max-micro", action="store_true", help="also find the largest micro-batch that fits")
    parser.add_argument("--json", help="write every row here too")
    parser.add_argument("--allow-cpu", action="store_true", help="run a tiny model on CPU (checks the script only)")
    return parser.parse_args(argv)


def packed_batch(micro: int, seq: int, doc_len: int, vocab: int, device, seed: int):
    """Rows of documents with lengths drawn around ``doc_len``, as the packer writes them."""
    import torch

    from pipeline.model.masks import segment_ids_from_lengths

    g = torch.Generator().manual_seed(seed)
    lengths = []
    for _ in range(micro):
        row, left = [], seq
        while left > 0:
            n = min(left, 1 + int(torch.empty(1).exponential_(1 / doc_len, generator=g)))
            row.append(n)
            left -= n
        lengths.append(row)
    ids = torch.randint(0, vocab, (micro, seq + 1), generator=g)
    return {
        "input_ids": ids[:, :-1].to(device),
        "labels": ids[:, 1:].to(device),
        "loss_mask": torch.ones(micro, seq, device=device),
        "segment_ids": segment_ids_from_lengths(lengths, seq).to(device),
    }


def job_config(model: dict, args, streams: int, micro: int, checkpointing: bool, backend: str):
    from pipeline.config.job import JobConfig

    return JobConfig.model_validate(
        {
            "model": {
                **model,
                "max_seq_len": max(model.get("max_seq_len", 0), args.seq),
                "vocab_size": args.vocab,
                "attention_backend": backend,
            },
            "parscale": {"streams": streams, "prefix_len": args.prefix_len},
            "parallel": {
                "micro_batch_size": micro,
                "global_batch_size": micro,
                "zero_stage": args.zero_stage,
                "precision": "fp32" if args.cpu else "bf16",
                "activation_checkpointing": checkpointing,
            },
            "train": {"tokens": 10**9},
        }
    )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory_reset(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def time_steps(step, args, device) -> float:
    for _ in range(args.warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / args.steps


def measure_engine(cfg, args, device, micro: int) -> dict:
    """Our path: the trainer's DeepSpeed engine over our model; one step = forward, backward, step."""
    import torch

    from pipeline.model import ParScaleLM
    from pipeline.training.engine import build_engine

    _memory_reset(device)
    torch.manual_seed(0)
    model = ParScaleLM(
        cfg.model, cfg.parscale, args.vocab, activation_checkpointing=cfg.parallel.activation_checkpointing
    )
    engine = build_engine(model.to(device), cfg.parallel, cfg.optimizer, cfg.parscale, 1)
    batch = packed_batch(micro, args.seq, args.doc_len, args.vocab, device, seed=1)

    def step():
        loss = engine(
            batch["input_ids"], labels=batch["labels"], loss_mask=batch["loss_mask"], segment_ids=batch["segment_ids"]
        ).loss
        engine.backward(loss)
        engine.step()

    try:
        return {"step_s": time_steps(step, args, device), "peak_gib": _peak_gib(device)}
    finally:
        engine.destroy()  # the caller resets memory once these locals are gone


def measure_plain(cfg, args, device, micro: int) -> dict:
    """The baseline: the same model in an eager PyTorch loop, SDPA with the dense document mask."""
    import torch

    from pipeline.model import ParScaleLM

    _memory_reset(device)
    torch.manual_seed(0)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = ParScaleLM(cfg.model, cfg.parscale, args.vocab).to(device=device, dtype=dtype)
    model.attention_backend = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = packed_batch(micro, args.seq, args.doc_len, args.vocab, device, seed=1)

    def step():
        loss = model(
            batch["input_ids"], labels=batch["labels"], loss_mask=batch["loss_mask"], segment_ids=batch["segment_ids"]
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"step_s": time_steps(step, args, device), "peak_gib": _peak_gib(device)}


def largest_micro(model: dict, args, streams: int, backend: str, device) -> int:
    """Doubling, then the first size that does not fit: the largest micro-batch that trains."""
    import torch

    fits, micro = 0, 1
    quick = argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 1})
    while micro <= 256:
        try:
            measure_engine(job_config(model, quick, streams, micro, False, backend), quick, device, micro)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            _memory_reset(device)
        fits, micro = micro, micro * 2
    return fits


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import yaml

    args.cpu = not torch.cuda.is_available()
    if args.cpu and not args.allow_cpu:
        print(
            "gpu_step.py: no CUDA device is visible (torch.cuda.is_available() is False); this benchmark "
            "measures GPU training. Run it on a GPU machine (README: 'Installing on a GPU machine').",
            file=sys.stderr,
        )
        return 2
    from pipeline.distributed import single_process
    from pipeline.model.counting import train_flops_per_token
    from pipeline.model.lm import padded_vocab_size

    model = TINY if args.cpu else yaml.safe_load(Path(args.model).read_text())["model"]
    if args.cpu:
        args.seq, args.doc_len, args.peak_tflops = min(args.seq, 128), min(args.doc_len, 32), args.peak_tflops
    streams = [int(s) for s in args.streams.split(",")]
    backends = [b for b in args.backends.split(",") if not (args.cpu and b == "flex")]
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    rows = []
    with single_process() as ctx:
        device = torch.device(ctx.device)
        header = {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "seq": args.seq,
            "micro": args.micro,
            "vocab": args.vocab,
            "peak_tflops": args.peak_tflops,
            "zero_stage": args.zero_stage,
        }
        print(json.dumps(header))
        print(
            f"{'P':>2} {'attention':>9} {'ckpt':>4} {'step s':>8} {'tok/s':>10} {'MFU':>6} {'peak GiB':>8} "
            f"{'vs plain':>8}"
        )
        for p in streams:
            base_cfg = job_config(model, args, p, args.micro, False, "sdpa")
            flops = train_flops_per_token(
                base_cfg.model,
                base_cfg.parscale,
                padded_vocab_size(args.vocab, base_cfg.model.pad_vocab_to_multiple_of, 1),
                args.seq,
            )
            tokens = args.micro * args.seq
            plain = None if args.no_baseline else measure_plain(base_cfg, args, device, args.micro)
            _memory_reset(device)
            runs = [("plain", False, plain)] if plain else []
            for backend in backends:
                for ckpt in checkpointing:
                    cfg = job_config(model, args, p, args.micro, ckpt, backend)
                    runs.append((backend, ckpt, measure_engine(cfg, args, device, args.micro)))
                    _memory_reset(device)
            for backend, ckpt, result in runs:
                tok_s = tokens / result["step_s"]
                row = {
                    "streams": p,
                    "attention": backend,
                    "checkpointing": ckpt,
                    **result,
                    "tokens_per_s": tok_s,
                    "mfu": tok_s * flops / (args.peak_tflops * 1e12),
                    "vs_plain": plain["step_s"] / result["step_s"] if plain else None,
                }
                rows.append(row)
                peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
                ratio = "-" if row["vs_plain"] is None else f"{row['vs_plain']:.2f}x"
                print(
                    f"{p:>2} {backend:>9} {'on' if ckpt else 'off':>4} {row['step_s']:>8.3f} {tok_s:>10,.0f} "
                    f"{row['mfu']:>6.1%} {peak:>8} {ratio:>8}",
                    flush=True,
                )
            if args.max_micro and device.type == "cuda":
                for backend in backends:
                    fits = largest_micro(model, args, p, backend, device)
                    rows.append({"streams": p, "attention": backend, "largest_micro_batch": fits})
                    print(f"{p:>2} {backend:>9} largest micro-batch that fits: {fits}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
