"""Benchmark the trainer on this machine, all in one run, one process, fp32:

1. step time of our trainer (DeepSpeed engine, ZeRO-1, megatron-core TP layers, data pipeline,
   schedule, metrics) against a minimal plain-PyTorch loop on the same model, batch and optimizer
   (torch AdamW, clipping); goal: overhead ratio <= 1.15;
2. achieved model FLOP/s (6N-style count incl. attention, from pipeline.model.counting) against
   the fp32 matrix-multiply FLOP/s measured here; goal >= 0.5 at hidden >= 512;
3. step-time ratio of ParScale P=4 to dense.

    python benchmarks/train_overhead.py [--hidden 512 --layers 4 --seq 256 --micro 4 --gas 2 --steps 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def prepare(root: Path, seq: int) -> Path:
    out = root / "data"
    cfg = {
        "data": {"sources": [{"type": "stdlib", "glob": "[a-e]*.py"}], "output_dir": str(out), "val_fraction": 0.0},
        "tokenizer": {"vocab_size": 4096, "sample_docs": 300},
        "packing": {"seq_len": seq, "strategy": "concat"},
    }
    (root / "prep.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run(
        [str(Path(sys.executable).parent / "parscale"), "prep", str(root / "prep.yaml")],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def job(root: Path, data: Path, args, streams: int) -> Path:
    cfg = {
        "run": {"name": f"bench-p{streams}", "output_dir": str(root / f"run-p{streams}")},
        "data": {"output_dir": str(data)},
        "packing": {"seq_len": args.seq},
        "model": {
            "num_layers": args.layers,
            "hidden_size": args.hidden,
            "ffn_hidden_size": int(args.hidden * 2.75),
            "num_attention_heads": args.hidden // 64,
            "num_kv_heads": 2,
            "max_seq_len": args.seq,
            "pad_vocab_to_multiple_of": 64,
        },
        "parscale": {"streams": streams, "prefix_len": 48},
        "parallel": {"micro_batch_size": args.micro, "global_batch_size": args.micro * args.gas, "zero_stage": 1},
        "train": {"tokens": 10**9},
        "checkpoint": {"interval_steps": 10**6, "resume": False},
        "logging": {"wandb_mode": "disabled", "interval_steps": 10**6},
        "eval": {"interval_steps": 0},
    }
    path = root / f"p{streams}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def time_trainer(config: Path, steps: int, with_plain: bool = False) -> tuple[float, float | None, float]:
    """Seconds per step of our trainer (and of the plain loop on the same model and batches), and
    the model's training FLOPs per step, in the trainer's own world of processes."""
    from pipeline.config import load_config
    from pipeline.distributed import distributed_world
    from pipeline.model.counting import train_flops_per_token
    from pipeline.training.trainer import Trainer

    loaded = load_config(config)
    with distributed_world(loaded.config, loaded.error) as ctx:
        trainer = Trainer.from_loaded(loaded, ctx)
        trainer.train_step()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        trainer_s = (time.perf_counter() - start) / steps
        plain_s = time_plain(trainer, steps) if with_plain else None
        cfg = trainer.cfg
        per_token = train_flops_per_token(
            cfg.model, cfg.parscale, trainer.engine.module.padded_vocab_size, trainer.seq_len
        )
        return trainer_s, plain_s, per_token * trainer.tokens_per_step


def time_plain(trainer, steps: int) -> float:
    """The same model, batches and optimizer as a bare PyTorch loop (no DeepSpeed, no metrics)."""
    from pipeline.data.loader import collate
    from pipeline.model import ParScaleLM

    cfg = trainer.cfg
    torch.manual_seed(0)
    model = ParScaleLM(cfg.model, cfg.parscale, trainer.vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas, weight_decay=0.1)
    micro, gas = cfg.parallel.micro_batch_size, trainer.gas
    batches = [
        collate(trainer.data.train.rows(i * micro, micro), trainer.seq_len, 0, cfg.model.document_attention)
        for i in range(gas)
    ]

    def step():
        for b in batches:
            loss = model(b.input_ids, labels=b.labels, loss_mask=b.loss_mask, segment_ids=b.segment_ids).loss
            (loss / gas).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--gas", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        root = Path(tmp)
        data = prepare(root, args.seq)
        trainer_s, plain_s, flops = time_trainer(job(root, data, args, 1), args.steps, with_plain=True)
        tokens = args.micro * args.gas * args.seq
        peak = matmul_flops()
        p4_s, _, _ = time_trainer(job(root, data, args, 4), args.steps)
    print(
        f"model: {args.layers} layers x hidden {args.hidden}, seq {args.seq}, batch {args.micro} x {args.gas} "
        f"accumulation = {tokens} tokens/step, fp32, torch threads {torch.get_num_threads()}"
    )
    print(f"plain PyTorch loop   {plain_s * 1e3:8.1f} ms/step")
    print(f"our trainer          {trainer_s * 1e3:8.1f} ms/step")
    print(f"overhead ratio (trainer / plain): {trainer_s / plain_s:.3f}  (goal <= 1.15)")
    print(f"\nmatmul fp32 (2048^2): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"model FLOP/s: trainer {flops / trainer_s / 1e9:.1f} GFLOP/s = {flops / trainer_s / peak:.2f} of matmul "
        f"(goal >= 0.5); plain loop {flops / plain_s / peak:.2f}"
    )
    print(f"\nParScale P=4 step {p4_s * 1e3:.1f} ms: step-time ratio P=4 / dense = {p4_s / trainer_s:.2f}x")


if __name__ == "__main__":
    main()
