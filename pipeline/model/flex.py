"""FlexAttention for packed documents with ParScale prefixes: one ``BlockMask`` per batch, shared
by every layer and every stream, and the fused kernel (compiled) on CUDA.

Layout under this backend: a layer's keys are its T real tokens followed by the prefix slots
(``T + prefix_len`` keys), so the causal diagonal stays aligned with the 128-token blocks and
more blocks are skipped whole or computed without a mask. A query sees the keys of its own
document up to itself, and every prefix slot. Attention does not depend on the order of keys,
so this equals the SDPA path, which keeps the prefix in front (as the KV cache does).

Which backend runs (``model.attention_backend``): ``sdpa`` always the dense-mask / ``is_causal``
path; ``flex`` FlexAttention for every masked (packed or prefixed) training batch; ``auto`` flex on
CUDA and SDPA elsewhere (FlexAttention has no CPU backward in torch 2.13). Plain causal batches
and cached decoding use SDPA under every setting."""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

_compiled = None


def use_flex(backend: str, device: torch.device) -> bool:
    if backend == "flex":
        return True
    return backend == "auto" and device.type == "cuda"


def training_backend(backend: str, device: torch.device) -> str:
    """The kernel masked training batches run on ("flex" or "sdpa"); ValueError where the
    requested one cannot train on ``device``."""
    if backend == "flex" and device.type != "cuda":
        raise ValueError(
            f"flex trains only on CUDA (this process runs on {device}; FlexAttention has no CPU "
            f"backward in torch {torch.__version__}): use auto or sdpa"
        )
    return "flex" if use_flex(backend, device) else "sdpa"


def document_block_mask(
    segment_ids: torch.Tensor | None, batch: int, seq: int, prefix_len: int, streams: int, device: torch.device
) -> BlockMask:
    """Block mask for ``streams * batch`` stream-major rows (row p*B + b is sequence b) over
    ``seq`` queries and ``seq + prefix_len`` keys; ``segment_ids`` [B, T] or None (one document)."""
    if segment_ids is None:
        segment_ids = torch.zeros(batch, seq, dtype=torch.long, device=device)

    def mask_mod(b, h, q, kv):
        row = b % batch  # the stream copies of a row share its documents
        token = kv.clamp(max=seq - 1)
        same_doc = segment_ids[row, token] == segment_ids[row, q]
        return (kv >= seq) | ((kv <= q) & same_doc)

    mask = create_block_mask(
        mask_mod, batch, None, seq, seq + prefix_len, device=device, _compile=device.type == "cuda"
    )
    if streams == 1:
        return mask

    # the block tables (a few ints per 128x128 block), not the mask, are repeated per stream
    def rep(t):
        return None if t is None else t.repeat(streams, *([1] * (t.dim() - 1)))

    return BlockMask.from_kv_blocks(
        rep(mask.kv_num_blocks),
        rep(mask.kv_indices),
        rep(mask.full_kv_num_blocks),
        rep(mask.full_kv_indices),
        BLOCK_SIZE=mask.BLOCK_SIZE,
        mask_mod=mask_mod,
        seq_lengths=mask.seq_lengths,
    )


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """q [rows, heads, T, d]; k, v [rows, kv heads, T + prefix, d] (grouped-query)."""
    global _compiled
    if q.device.type == "cuda":
        if _compiled is None:
            _compiled = torch.compile(flex_attention, dynamic=False)
        return _compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)
