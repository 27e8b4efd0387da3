"""Positions and attention masks for packed rows (documents restart positions and do not see each
other), ParScale prefixes (always visible) and cached decoding (padding never visible)."""

from __future__ import annotations

import torch


def segment_ids_from_lengths(lengths: list[list[int]], total: int) -> torch.Tensor:
    """Per-row segment lengths -> [B, total] ids 0, 1, 2, ... (trailing padding gets its own id)."""
    rows = []
    for segs in lengths:
        ids = torch.repeat_interleave(torch.arange(len(segs)), torch.tensor(segs))
        pad = total - len(ids)
        rows.append(torch.cat([ids, torch.full((pad,), len(segs))]) if pad > 0 else ids[:total])
    return torch.stack(rows)


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... restarting wherever the segment id changes."""
    b, t = segment_ids.shape
    idx = torch.arange(t, device=segment_ids.device).expand(b, t)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


def attention_mask(
    query_index: torch.Tensor,
    key_index: torch.Tensor,
    *,
    query_segments: torch.Tensor | None = None,
    key_segments: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    prefix_len: int = 0,
) -> torch.Tensor:
    """Boolean mask [B, 1, Tq, prefix_len + Tk]: True = may attend.

    A query sees earlier-or-same keys of its own segment that are valid, plus every prefix slot.
    ``query_index`` [B, Tq] and ``key_index`` [B, Tk] are slot numbers in one row's token sequence.
    """
    mask = key_index[:, None, :] <= query_index[:, :, None]
    if query_segments is not None:
        mask &= key_segments[:, None, :] == query_segments[:, :, None]
    if key_valid is not None:
        mask &= key_valid[:, None, :]
    mask |= key_index[:, None, :] == query_index[:, :, None]  # a token always sees itself: no empty rows
    if prefix_len:
        mask = torch.cat([mask.new_ones(mask.shape[0], mask.shape[1], prefix_len), mask], dim=-1)
    return mask[:, None]
