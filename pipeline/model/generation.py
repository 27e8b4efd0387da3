"""Incremental decoding with a KV cache: greedy, temperature, top-k and top-p sampling, batches of
prompts of different lengths (left-padded), stop at EOS. ParScale models decode P streams per
sequence from caches pre-seeded with the prefixes; the aggregated distribution is sampled once."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import KVCache


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    eos_id: int | None = None
    seed: int = 0


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and outside the smallest top-p nucleus."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], sampling: Sampling, pad_id: int = 0) -> list[list[int]]:
    """New tokens for each prompt (up to and including EOS, if met)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch, longest = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((batch, longest), dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        ids[i, longest - len(prompt) :] = torch.tensor(prompt, device=device)
        valid[i, longest - len(prompt) :] = True
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model, batch, longest + sampling.max_new_tokens, dtype, device)
    generator = torch.Generator(device=device).manual_seed(sampling.seed)
    was_training = model.training
    model.eval()
    last_column = torch.zeros_like(valid)
    last_column[:, -1] = True  # left-padded: each prompt's last token (the prompt's other logits are not needed)
    out = model(ids, position_ids=positions, cache=cache, key_valid=valid, logits_at=last_column)
    logits = model.full_logits(out.logits)  # [B, vocab]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    new: list[list[int]] = [[] for _ in range(batch)]
    last = positions[:, -1]
    for _ in range(sampling.max_new_tokens):
        token = next_tokens(logits, sampling, generator)
        for i in range(batch):
            if not done[i]:
                new[i].append(int(token[i]))
        if sampling.eos_id is not None:
            done |= token == sampling.eos_id
        if bool(done.all()) or cache.length == cache.capacity:
            break
        valid = torch.cat([valid, torch.ones((batch, 1), dtype=torch.bool, device=device)], dim=1)
        last = last + 1
        out = model(token[:, None], position_ids=last[:, None], cache=cache, key_valid=valid)
        logits = model.full_logits(out.logits)[:, -1]
    model.train(was_training)
    return new
