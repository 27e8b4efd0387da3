"""Diagnostics of ParScale's P streams: do they differ, and does the merge use them?

- ``stream_spread``: RMS distance of each stream's final hidden states from the streams' mean,
  relative to the mean (0: the streams are identical);
- ``weight_entropy``: mean over real tokens of the aggregation weights' entropy (ln P: uniform);
- ``max_mean_weight``: the largest stream's mean weight (1/P: balanced, near 1: one stream wins);
- ``prefix_cosine``: mean pairwise cosine similarity of the streams' prefixes (all layers, keys and
  values); ``update_cosine``: the same for their change since a reference (the initialisation);
- ``diversity_gain``: validation loss with every stream's prefix replaced by the streams' mean,
  minus the real loss; near 0 means the model is single-prefix tuning, not P-scaling.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..utils import collectives

#: below this diversity gain (nats) the streams add nothing a single shared prefix would not
SINGLE_PREFIX_GAIN = 1e-3


class StreamStats:
    """Sums over evaluation batches (device tensors; one reduction at the end)."""

    def __init__(self, streams: int, device):
        self.streams = streams
        # spread numerator, spread denominator, entropy x tokens, tokens
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)
        self.weights = torch.zeros(streams, dtype=torch.float64, device=device)  # weight x tokens per stream

    def add(self, stream_states: torch.Tensor, stream_weights: torch.Tensor, loss_mask: torch.Tensor) -> None:
        """``stream_states`` [P, B, T, H]; ``stream_weights`` [B, T, P]; ``loss_mask`` [B, T]. The
        states are upcast first: near-identical streams differ below bf16's resolution (8 bits of
        mantissa), so a bf16 run's differences, and its sums, are taken in fp32."""
        stream_states = stream_states.float()  # fp32 states: the same tensor, nothing changes
        mean = stream_states.mean(0, keepdim=True)
        mask = loss_mask.to(torch.float64)
        w = stream_weights.to(torch.float64)
        entropy = -(w * w.clamp(min=1e-12).log()).sum(-1)
        self.sums += torch.stack(
            [
                (stream_states - mean).pow(2).sum().double(),
                mean.pow(2).sum().double() * self.streams,
                (entropy * mask).sum(),
                mask.sum(),
            ]
        )
        self.weights += (w * mask[..., None]).sum((0, 1))

    def result(self, group=None) -> dict:
        """The statistics over every rank of ``group`` (a DP group; None: the world)."""
        total = collectives.all_reduce(torch.cat([self.sums, self.weights]), "sum", group).tolist()
        num, den, ent, tokens = total[:4]
        weights = [w / max(tokens, 1) for w in total[4:]]
        return {
            "stream_spread": math.sqrt(num / den) if den > 0 else None,
            "weight_entropy": ent / max(tokens, 1),
            "max_mean_weight": max(weights),
        }


def _prefixes(model) -> list[torch.Tensor]:
    return [t for layer in model.model.layers for t in layer.self_attn.prefix()]


def stream_vectors(model) -> torch.Tensor:
    """[P, n]: this rank's slice of every layer's prefix keys and values, one row per stream."""
    with torch.no_grad():
        return torch.cat([t.detach().float().reshape(t.shape[0], -1) for t in _prefixes(model)], dim=1)


def mean_pairwise_cosine(vectors: torch.Tensor, tp_group=None) -> float:
    """Mean cosine over stream pairs of rows that may be split over TP ranks (the Gram matrix is
    summed over ``tp_group``)."""
    gram = collectives.all_reduce(vectors.double() @ vectors.double().T, "sum", tp_group)
    norms = gram.diagonal().clamp(min=1e-30).sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    p = cos.shape[0]
    return float((cos.sum() - cos.diagonal().sum()) / (p * (p - 1)))


@contextlib.contextmanager
def mean_prefix(model):
    """Every stream uses the streams' mean prefix inside the block (for the diversity gain)."""
    prefixes = [layer.self_attn.prefix for layer in model.model.layers]
    for prefix in prefixes:
        prefix.collapsed = True
    try:
        yield model
    finally:
        for prefix in prefixes:
            prefix.collapsed = False
