"""ParScale's dynamic aggregation of the P streams, after the final norm and before the LM head:
``Linear(P*h -> h), SiLU, Linear(h -> P)`` over the streams' hidden states concatenated
feature-major ("(p b) s h -> b s (h p)"), softmax over P in fp32, smoothed w*(1-eps) + eps/P,
then the weighted sum. Replicated on every TP rank (its input is). The layers are a plain
``nn.Sequential`` so the parameters keep the official names ``aggregate_layer.0`` / ``.2``."""

from __future__ import annotations

import torch
from torch import nn


def build_aggregate_layer(hidden: int, streams: int, init_std: float, last_std: float = 1e-3) -> nn.Sequential:
    layers = nn.Sequential(nn.Linear(streams * hidden, hidden), nn.SiLU(), nn.Linear(hidden, streams))
    nn.init.normal_(layers[0].weight, std=init_std)
    nn.init.zeros_(layers[0].bias)
    nn.init.normal_(layers[2].weight, std=last_std)  # small: near-uniform weights at the start, gradients flowing
    nn.init.zeros_(layers[2].bias)
    return layers


def stream_weights(layers: nn.Sequential, hidden: torch.Tensor, streams: int, eps: float) -> torch.Tensor:
    """Smoothed weights [B, T, P] (fp32) for stream-major ``hidden`` [P*B, T, h]."""
    b = hidden.shape[0] // streams
    feats = hidden.view(streams, b, *hidden.shape[1:]).permute(1, 2, 3, 0).reshape(b, hidden.shape[1], -1)
    w = torch.softmax(layers(feats).float(), dim=-1)
    return w * (1 - eps) + eps / streams


def aggregate(layers: nn.Sequential, hidden: torch.Tensor, streams: int, eps: float):
    """(weighted sum [B, T, h], weights [B, T, P])."""
    w = stream_weights(layers, hidden, streams, eps)
    per_stream = hidden.view(streams, hidden.shape[0] // streams, *hidden.shape[1:])
    return torch.einsum("btp,pbth->bth", w.to(hidden.dtype), per_stream), w
