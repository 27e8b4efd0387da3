"""Training step on one GPU: step time, tokens/s, MFU and peak memory of the dense preset and of
ParScale P = 2, 4, 8 on it, bf16, packed documents, for each attention backend, activation
checkpointing on from P = 4 (``--checkpointing auto``; or off, on, both), and the ratio to a plain
eager PyTorch loop over the same model (SDPA with a dense document mask, bf16 weights, torch AdamW,
no DeepSpeed). All in one run.

    python benchmarks/gpu_step.py                       # 0.5B preset, seq 2048, P = 1,2,4,8, flex + sdpa
    python benchmarks/gpu_step.py --streams 1,4 --micro 4 --steps 20 --json out.json
    python benchmarks/gpu_step.py --max-micro           # also: the largest micro-batch that fits, per P

What runs: our model (megatron-core TP layers, TP = 1) inside a DeepSpeed engine (ZeRO stage
``--zero-stage``, bf16 with fp32 master weights, world size 1 over NCCL), the trainer's own engine
builder, on synthetic packed rows (documents of random lengths, mean ``--doc-len`` tokens). The data
pipeline is not part of the measure. MFU = model FLOPs per token (pipeline/model/counting.py: 6N
style, attention and prefix included, recomputation not counted) x tokens/s / ``--peak-tflops``
(default: the H100 SXM's dense bf16 datasheet peak, 989 TFLOP/s).

Each row is measured on its own: one that runs out of GPU memory is recorded with ``"status":
"oom"`` and the others still run; with ``--json`` the file is rewritten (atomically) after every
row, so a crash loses nothing already measured. Each SDPA row records the kernel SDPA dispatched to
on the exact shapes of the model's attention (``sdpa_kernel``: flash, efficient, cudnn or math; cpu
on the host); math materialises the T x T scores, quadratic memory, and is flagged in the table.
FlexAttention is checked by one tiny compile first: where it cannot compile its rows are left out,
saying why.

Needs CUDA; on a machine without it, exits 2 (``--allow-cpu`` runs the same code on a tiny model
on CPU, SDPA only, to check the script itself: its figures mean nothing; ``--tiny`` uses that model
on a GPU too).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
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
        "--checkpointing",
        choices=["auto", "off", "on", "both"],
        default="auto",
        help="activation checkpointing: auto = on for P >= 4 (default; P = 8 at the 0.5B preset needs over 100 GiB "
        "of activations without it), off, on, or both",
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
    parser.add_argument("--tiny", action="store_true", help="the tiny model and short rows on any device (checks)")
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
        result = {"step_s": time_steps(step, args, device), "peak_gib": _peak_gib(device)}
        if cfg.model.attention_backend == "sdpa":
            result.update(sdpa_kernel(engine.module, batch, device))
        return result
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

    return {
        "step_s": time_steps(step, args, device),
        "peak_gib": _peak_gib(device),
        **sdpa_kernel(model, batch, device),
    }


# SDPA's kernels as torch._fused_sdp_choice numbers them (torch.backends.cuda.SDPBackend)
SDPA_KERNELS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


class _SdpaCall(Exception):
    """Raised from inside a model's first SDPA call, carrying its arguments (the pass stops there)."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("scaled_dot_product_attention called")
        self.call = (args, kwargs)


def first_sdpa_call(model, batch) -> tuple[tuple, dict] | None:
    """(args, kwargs) of the model's first ``scaled_dot_product_attention`` call on ``batch``, with
    gradients on as in training; None if the pass makes none (FlexAttention)."""
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    class Capture(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                raise _SdpaCall(args, kwargs or {})
            return func(*args, **(kwargs or {}))

    try:
        with Capture():
            model(batch["input_ids"], segment_ids=batch["segment_ids"])
    except _SdpaCall as captured:
        return captured.call
    return None


def sdpa_kernel(model, batch, device) -> dict:
    """Which SDPA kernel the model's attention dispatches to on ``batch``'s exact shapes, dtype and
    mask: ``sdpa_kernel`` (flash, efficient, cudnn or math; "cpu" on the host), ``sdpa_shape``
    [rows, heads, queries, keys, head dim], ``sdpa_mask`` and, for math, why no fused kernel took it."""
    import torch

    call = first_sdpa_call(model, batch)
    if call is None:
        return {"sdpa_kernel": None}
    (q, k, v, *_), kwargs = call
    mask, causal, gqa = kwargs.get("attn_mask"), bool(kwargs.get("is_causal")), bool(kwargs.get("enable_gqa"))
    found = {"sdpa_shape": [q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]], "sdpa_mask": mask is not None}
    if device.type != "cuda":
        return {"sdpa_kernel": "cpu", **found}
    choice = int(torch._fused_sdp_choice(q, k, v, mask, 0.0, causal, enable_gqa=gqa))
    kernel = SDPA_KERNELS.get(choice, f"unknown ({choice})")
    if kernel == "math":
        found["sdpa_why_not_fused"] = why_not_fused(torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, causal, gqa))
    return {"sdpa_kernel": kernel, **found}


def why_not_fused(params) -> list[str]:
    """The reasons (torch's debug warnings) each fused SDPA kernel refuses ``params``."""
    import torch

    reasons = []
    checks = (
        ("flash", torch.backends.cuda.can_use_flash_attention),
        ("efficient", torch.backends.cuda.can_use_efficient_attention),
        ("cudnn", torch.backends.cuda.can_use_cudnn_attention),
    )
    for name, check in checks:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            usable = check(params, debug=True)
        if not usable:
            reasons += [f"{name}: {str(w.message).strip()}" for w in seen] or [f"{name}: refused"]
    return reasons


def largest_micro(model: dict, args, streams: int, backend: str, device) -> int:
    """Doubling, then the first size that does not fit: the largest micro-batch that trains."""
    import torch

    fits, micro = 0, 1
    quick = argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 1})
    while micro <= 256:
        try:
            measure_engine(job_config(model, quick, streams, micro, False, backend), quick, device, micro)
        except torch.OutOfMemoryError:
            break
        finally:
            _memory_reset(device)
        fits, micro = micro, micro * 2
    return fits


def checkpointing_for(choice: str, streams: int) -> list[bool]:
    """The activation checkpointing settings measured at P = ``streams``: ``auto`` is on from P = 4."""
    if choice == "auto":
        return [streams >= 4]
    return {"off": [False], "on": [True], "both": [False, True]}[choice]


def guarded(measure, device) -> dict:
    """``{"status": "ok", **measure()}``, or ``{"status": "oom"}`` where it runs out of memory (the
    row is recorded and the run goes on); memory is reset after either."""
    import torch

    try:
        result = {"status": "ok", **measure()}
    except torch.OutOfMemoryError:
        result = {"status": "oom"}
    _memory_reset(device)  # outside the except block: the error's frames (and their tensors) are gone
    return result


def usable_backends(requested: list[str], device, notes: dict) -> list[str]:
    """The requested backends that can run on ``device``: flex only on CUDA, and only where its
    preflight compile (the trainer's start-up check) works; why it cannot goes into ``notes``."""
    import torch

    from pipeline.model.flex import flex_problem

    backends = [b for b in requested if not (device.type != "cuda" and b == "flex")]
    if "flex" in backends and (problem := flex_problem(device, torch.bfloat16)):
        print(f"gpu_step.py: flex left out, its preflight compile failed: {problem}", file=sys.stderr, flush=True)
        notes["flex_unavailable"] = problem
        backends.remove("flex")
    return backends


class Rows:
    """The rows measured so far: each printed as it comes and, with a ``path``, the whole JSON
    rewritten there (atomically: a temporary file renamed) after each one."""

    def __init__(self, header: dict, path: str | None):
        self.header, self.path, self.rows = header, path, []
        self.write()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.write()

    def write(self) -> None:
        from pipeline.utils.fs import atomic_write_text

        if self.path:
            atomic_write_text(self.path, json.dumps({**self.header, "rows": self.rows}, indent=2))


TABLE_HEADER = f"{'P':>2} {'attention':>9} {'ckpt':>4} {'step s':>8} {'tok/s':>10} {'MFU':>6} {'peak GiB':>8} {'vs plain':>8}  sdpa"


def format_row(row: dict) -> str:
    """One line of the printed table; a math SDPA kernel is flagged (quadratic memory)."""
    p, backend = row["streams"], row["attention"]
    if "largest_micro_batch" in row:
        return f"{p:>2} {backend:>9} largest micro-batch that fits: {row['largest_micro_batch']}"
    ckpt = "on" if row["checkpointing"] else "off"
    if row["status"] == "oom":
        return f"{p:>2} {backend:>9} {ckpt:>4} {'out of memory':>36}"
    peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
    ratio = "-" if row["vs_plain"] is None else f"{row['vs_plain']:.2f}x"
    kernel = row.get("sdpa_kernel") or "-"
    if kernel == "math":
        kernel = "math (quadratic memory!)"
    return (
        f"{p:>2} {backend:>9} {ckpt:>4} {row['step_s']:>8.3f} {row['tokens_per_s']:>10,.0f} {row['mfu']:>6.1%} "
        f"{peak:>8} {ratio:>8}  {kernel}"
    )


def timing_row(streams: int, backend: str, ckpt: bool, result: dict, plain: dict | None, tokens: int, flops, args):
    """A measured row: the result, and where it ran, tokens/s, MFU and the ratio to the plain loop."""
    row = {"streams": streams, "attention": backend, "checkpointing": ckpt, **result}
    if result["status"] == "ok":
        tok_s = tokens / result["step_s"]
        fine = plain is not None and plain["status"] == "ok"
        row.update(
            tokens_per_s=tok_s,
            mfu=tok_s * flops / (args.peak_tflops * 1e12),
            vs_plain=plain["step_s"] / result["step_s"] if fine else None,
        )
    return row


def measure_streams(p: int, model: dict, args, backends: list[str], device, rows: Rows) -> None:
    """Every row of P = ``p``: the plain loop, then each backend x checkpointing setting, each
    recorded as soon as it is measured (out of memory included)."""
    from pipeline.model.counting import train_flops_per_token
    from pipeline.model.lm import padded_vocab_size

    base_cfg = job_config(model, args, p, args.micro, False, "sdpa")
    vocab = padded_vocab_size(args.vocab, base_cfg.model.pad_vocab_to_multiple_of, 1)
    flops = train_flops_per_token(base_cfg.model, base_cfg.parscale, vocab, args.seq)
    tokens = args.micro * args.seq
    plain = None
    if not args.no_baseline:
        plain = guarded(lambda: measure_plain(base_cfg, args, device, args.micro), device)
        rows.add(timing_row(p, "plain", False, plain, plain, tokens, flops, args))
    for backend in backends:
        for ckpt in checkpointing_for(args.checkpointing, p):
            cfg = job_config(model, args, p, args.micro, ckpt, backend)
            result = guarded(lambda cfg=cfg: measure_engine(cfg, args, device, args.micro), device)
            rows.add(timing_row(p, backend, ckpt, result, plain, tokens, flops, args))
    if args.max_micro and device.type == "cuda":
        for backend in backends:
            rows.add(
                {
                    "streams": p,
                    "attention": backend,
                    "largest_micro_batch": largest_micro(model, args, p, backend, device),
                }
            )


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

    small = args.cpu or args.tiny
    model = TINY if small else yaml.safe_load(Path(args.model).read_text())["model"]
    if small:
        args.seq, args.doc_len = min(args.seq, 128), min(args.doc_len, 32)
    with single_process(device="cpu" if args.cpu else "cuda") as ctx:
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
            "checkpointing": args.checkpointing,
        }
        backends = usable_backends(args.backends.split(","), device, header)
        print(json.dumps(header))
        rows = Rows(header, args.json)
        print(TABLE_HEADER)
        for p in (int(s) for s in args.streams.split(",")):
            measure_streams(p, model, args, backends, device, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
