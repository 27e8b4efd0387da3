"""Inference cost of ParScale against parameter scaling at equal predicted loss: decode with P
streams, and with the dense model of N (k ln P + 1) parameters (same depth and head size, width and
FFN searched), measuring latency per token and memory (weights + KV cache, exact tensor bytes).
The paper's measure is the ratio of the *increases* over the P=1 model."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch

from ..config.model import ModelConfig, ParScaleConfig
from ..distributed import preferred_device, single_process
from ..model import ParScaleLM
from ..model.cache import KVCache
from ..model.counting import parameter_counts

PAPER = {"memory": 22.0, "latency": 6.0, "where": "Chen et al. 2025: 1.6B model, GPU, batch 1"}


@dataclass(frozen=True)
class Cost:
    seconds_per_token: float
    bytes: int  # weights + KV cache


def non_embedding(cfg: ModelConfig, vocab: int) -> int:
    return parameter_counts(cfg, ParScaleConfig(), vocab).non_embedding


def dense_equivalent(base: ModelConfig, vocab: int, factor: float, step: int = 16) -> ModelConfig:
    """The dense model of the same depth and head size whose non-embedding size is closest to
    ``factor`` x the base's (hidden size in multiples of the head size, FFN in multiples of ``step``)."""
    target = non_embedding(base, vocab) * factor
    head_dim, group = base.kv_channels, base.num_attention_heads // base.num_kv_heads
    best, best_gap = base, math.inf
    for heads in range(base.num_attention_heads, 4 * base.num_attention_heads + 1):
        if heads % group:
            continue
        hidden = heads * head_dim
        for ffn in range(max(step, 2 * hidden // step * step), 8 * hidden + 1, step):
            cfg = base.model_copy(
                update={
                    "hidden_size": hidden,
                    "ffn_hidden_size": ffn,
                    "num_attention_heads": heads,
                    "num_kv_heads": heads // group,
                    "head_dim": head_dim,
                }
            )
            gap = abs(non_embedding(cfg, vocab) - target)
            if gap < best_gap:
                best, best_gap = cfg, gap
    return best


def decode_cost(
    cfg: ModelConfig,
    parscale: ParScaleConfig,
    vocab: int,
    batch: int,
    prompt: int,
    new: int,
    repeats: int = 5,
    device: str = "cpu",
) -> Cost:
    """Greedy decoding of ``new`` tokens after a ``prompt``-token prefill: the fastest of ``repeats``
    timed runs (noise only ever adds time), and the bytes of weights + KV cache. On CUDA the model
    runs in bf16 and the timing waits for the device; on CPU in fp32."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = ParScaleLM(cfg, parscale, vocab).to(device=device, dtype=dtype).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first run warms up
            cache = KVCache(model, batch, prompt + new, dtype, device)
            valid = torch.ones(batch, prompt + new, dtype=torch.bool, device=device)
            model(torch.randint(0, vocab, (batch, prompt), device=device), cache=cache, key_valid=valid[:, :prompt])
            token = torch.randint(0, vocab, (batch, 1), device=device)
            sync()
            start = time.perf_counter()
            for i in range(new):
                token = model(token, cache=cache, key_valid=valid[:, : prompt + i + 1]).logits[:, -1:].argmax(-1)
            sync()
            runs.append((time.perf_counter() - start) / new)
    kv = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    return Cost(min(runs[1:]), weights + kv)


@dataclass(frozen=True)
class Comparison:
    streams: int
    batch: int
    k: float
    base: Cost  # the P=1 model
    parscale: Cost
    dense: Cost  # the dense model of N (k ln P + 1) parameters
    dense_params: int
    dense_shape: str

    @property
    def memory_ratio(self) -> float:
        """Extra memory of parameter scaling over extra memory of ParScale (> 1: ParScale cheaper)."""
        return (self.dense.bytes - self.base.bytes) / max(self.parscale.bytes - self.base.bytes, 1)

    @property
    def latency_ratio(self) -> float:
        extra = self.parscale.seconds_per_token - self.base.seconds_per_token
        dense_extra = self.dense.seconds_per_token - self.base.seconds_per_token
        return dense_extra / extra if extra > 0 else math.inf

    def as_dict(self) -> dict:
        return {**asdict(self), "memory_ratio": self.memory_ratio, "latency_ratio": self.latency_ratio}


def compare(
    base: ModelConfig,
    parscale: ParScaleConfig,
    vocab: int,
    streams: list[int],
    k: float,
    batch_sizes: list[int],
    prompt: int,
    new: int,
    repeats: int = 5,
) -> list[Comparison]:
    """At each batch size: the P=1 model, then per P > 1 the model with P streams and the dense
    model of N (k ln P + 1) parameters, each decoded the same way."""
    out = []
    with single_process(device=preferred_device()) as ctx:
        for batch in batch_sizes:
            cost = partial(
                decode_cost, vocab=vocab, batch=batch, prompt=prompt, new=new, repeats=repeats, device=ctx.device
            )
            base_cost = cost(base, ParScaleConfig())
            for p in (s for s in streams if s > 1):
                eq = dense_equivalent(base, vocab, k * math.log(p) + 1)
                out.append(
                    Comparison(
                        streams=p,
                        batch=batch,
                        k=k,
                        base=base_cost,
                        parscale=cost(base, parscale.model_copy(update={"streams": p})),
                        dense=cost(eq, ParScaleConfig()),
                        dense_params=non_embedding(eq, vocab),
                        dense_shape=f"{eq.hidden_size}/{eq.ffn_hidden_size}",
                    )
                )
    return out
