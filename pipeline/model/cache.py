"""KV cache for incremental decoding. With ParScale it holds P caches per sequence (stream-major
rows) and is pre-seeded with each layer's prefix keys/values, which stay in front, unrotated."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, model, batch: int, capacity: int, dtype: torch.dtype, device: torch.device | str):
        layers = model.model.layers
        attn = layers[0].self_attn
        rows = model.streams * batch
        self.prefix_len = model.prefix_len
        self.length = 0  # tokens cached (prefix excluded)
        self.capacity = capacity
        shape = (rows, attn.kv_heads, self.prefix_len + capacity, attn.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        if self.prefix_len:
            with torch.no_grad():
                for i, layer in enumerate(layers):
                    pk, pv = layer.self_attn.prefix_kv(batch)
                    self.k[i][:, :, : self.prefix_len] = pk
                    self.v[i][:, :, : self.prefix_len] = pv

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for ``layer``; return everything cached so far (prefix first)."""
        start = self.prefix_len + self.length
        end = start + k.shape[2]
        if end > self.prefix_len + self.capacity:
            raise ValueError(f"KV cache full: capacity {self.capacity} tokens")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, tokens: int) -> None:
        self.length += tokens
