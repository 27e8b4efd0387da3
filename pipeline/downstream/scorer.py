"""What lm-evaluation-harness asks of a language model, on token ids, for one of our models in this
process: the log-likelihood of continuations (and whether each is the greedy one), and greedy
generation until a stop string. Requests are batched longest first, as lm-eval's Hugging Face model
batches them, so the padded length of a batch is known from its first request; results come back in
the order asked. No lm-eval import here: the harness adapter (``harness_model.py``) wraps it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.generation import Sampling, generate


@dataclass
class Scorer:
    model: torch.nn.Module  # a ParScaleLM (dense when P = 1), on ``device``
    eod_id: int  # the end-of-document id: what precedes a document in training (and pads)
    max_length: int  # tokens of context a request may use (the trained sequence length)
    batch_size: int = 8

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def loglikelihood(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """For each (context ids, continuation ids): the continuation's summed log-probability
        given the context (cut from the left to ``max_length`` + 1 tokens), and whether greedy
        decoding would have produced it."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, result in zip(chunk, self._score([pairs[i] for i in chunk]), strict=True):
                out[i] = result
        return out

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in pairs]
        width = max(len(ids) for ids in inputs)
        batch = torch.full((len(inputs), width), self.eod_id, dtype=torch.long)
        scored = torch.zeros((len(inputs), width), dtype=torch.bool)  # positions that predict a continuation token
        for row, ((_, cont), ids) in enumerate(zip(pairs, inputs, strict=True)):
            batch[row, : len(ids)] = torch.tensor(ids)  # padded on the right: causal attention never sees it
            scored[row, len(ids) - len(cont) : len(ids)] = True
        self.model.eval()
        device = self.device
        out = self.model(batch.to(device), logits_at=scored.to(device))
        logits = self.model.full_logits(out.logits).float()  # [continuation tokens of the batch, vocab]
        targets = torch.tensor([t for _, cont in pairs for t in cont], device=device)
        picked = (logits.gather(-1, targets[:, None])[:, 0] - logits.logsumexp(-1)).tolist()
        hits = (logits.argmax(dim=-1) == targets).tolist()
        results, at = [], 0
        for _, cont in pairs:
            results.append((sum(picked[at : at + len(cont)]), all(hits[at : at + len(cont)])))
            at += len(cont)
        return results

    @torch.no_grad()
    def generate_until(
        self, contexts: list[list[int]], until: list[str], max_new_tokens: int, decode: Callable[[list[int]], str]
    ) -> list[str]:
        """Greedy continuations of each context (cut from the left to leave room for
        ``max_new_tokens``), ended at the first stop string or end of document."""
        keep = max(1, self.max_length - max_new_tokens)
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        out = [""] * len(contexts)
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0, eos_id=self.eod_id)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            prompts = [contexts[i][-keep:] for i in chunk]
            for i, tokens in zip(chunk, generate(self.model, prompts, sampling, pad_id=self.eod_id), strict=True):
                out[i] = cut_at_stop(decode([t for t in tokens if t != self.eod_id]), until)
        return out


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the first of the stop strings (all of it when none occurs)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


__all__ = ["Scorer", "cut_at_stop"]
