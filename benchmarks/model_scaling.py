"""Benchmark the model on this machine, all in one run:

1. forward+backward throughput (tokens/s) of ParScale P = 2, 4, 8 relative to the dense model
   (same backbone, batch and sequence length);
2. decoding at batch 1 for P = 1..8: latency per token and inference memory (weights + KV cache,
   exact tensor bytes) against a dense model of the size the scaling law says P is worth,
   N * (k ln P + 1) with k = 0.39; reported as the ratio of the *increases* over the P=1 model,
   the paper's measure (it reports 22x less memory increase, 6x less latency increase at 1.6B on
   GPU, batch 1).

    python benchmarks/model_scaling.py [--hidden 512 --layers 8 --seq 256 --batch 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.model import ModelConfig, ParScaleConfig  # noqa: E402
from pipeline.distributed import single_process  # noqa: E402
from pipeline.model import ParScaleLM  # noqa: E402
from pipeline.model.counting import parameter_counts  # noqa: E402
from pipeline.scaling.inference_cost import compare  # noqa: E402
from pipeline.scaling.law import PAPER_K  # noqa: E402

K = PAPER_K  # the paper's fitted k (Stack-V2 Python)
VOCAB = 8192


def model_config(hidden: int, layers: int) -> ModelConfig:
    heads = max(2, hidden // 64)
    kv = 2 if heads % 2 == 0 else 1
    ffn = int(round(hidden * 2.75 / 64)) * 64
    return ModelConfig(
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_kv_heads=kv,
        vocab_size=VOCAB,
        max_seq_len=4096,
    )


def build(cfg: ModelConfig, streams: int) -> ParScaleLM:
    torch.manual_seed(0)
    return ParScaleLM(cfg, ParScaleConfig(streams=streams, prefix_len=48), VOCAB)


def train_throughput(cfg: ModelConfig, streams: int, batch: int, seq: int, steps: int) -> float:
    model = build(cfg, streams)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ids = torch.randint(0, VOCAB, (batch, seq + 1))
    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        model(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return batch * seq / (sum(times[1:]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256, help="training sequence length")
    parser.add_argument("--batch", type=int, default=2, help="training micro-batch")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per model")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32, help="decoded tokens")
    args = parser.parse_args()
    base = model_config(args.hidden, args.layers)
    n = parameter_counts(base, ParScaleConfig(), VOCAB).non_embedding
    print(
        f"base: {args.layers} layers, hidden {base.hidden_size}, ffn {base.ffn_hidden_size}, heads "
        f"{base.num_attention_heads}/{base.num_kv_heads}, {n / 1e6:.1f}M non-embedding params; vocab {VOCAB}; "
        f"torch threads {torch.get_num_threads()}; fp32 on CPU"
    )
    with single_process():
        print(f"\nforward+backward, batch {args.batch} x {args.seq} tokens")
        dense_tps = train_throughput(base, 1, args.batch, args.seq, args.steps)
        print(f"  P=1 (dense)  {dense_tps:8.0f} tok/s")
        for p in (2, 4, 8):
            tps = train_throughput(base, p, args.batch, args.seq, args.steps)
            print(
                f"  P={p}          {tps:8.0f} tok/s   throughput ratio to dense {tps / dense_tps:.3f} "
                f"(step-time ratio {dense_tps / tps:.2f}x)"
            )

    print(
        f"\ndecoding at batch 1: prompt {args.prompt}, {args.new} new tokens; dense equivalent of P streams: "
        f"N x ({K} ln P + 1)"
    )
    rows = compare(base, ParScaleConfig(prefix_len=48), VOCAB, list(range(1, 9)), K, [1], args.prompt, args.new)
    b = rows[0].base
    print(f"  P=1 base: {b.seconds_per_token * 1e3:.2f} ms/token, {b.bytes / 2**20:.1f} MiB")
    print("  P   ParScale ms/tok  MiB    | dense-equiv params  ms/tok  MiB    | mem incr ratio  latency incr ratio")
    for r in rows:
        print(
            f"  {r.streams}   {r.parscale.seconds_per_token * 1e3:10.2f}  {r.parscale.bytes / 2**20:8.1f}   | "
            f"{r.dense_params / 1e6:7.1f}M ({r.dense_shape})  {r.dense.seconds_per_token * 1e3:7.2f}  "
            f"{r.dense.bytes / 2**20:7.1f}  | {r.memory_ratio:8.1f}x  {r.latency_ratio:10.2f}x"
        )
    print(
        "\nratios > 1: parameter scaling costs that many times more extra memory / latency than ParScale "
        "for the same predicted loss. Paper (1.6B, GPU, batch 1): 22x memory, 6x latency."
    )


if __name__ == "__main__":
    main()
