"""Rank worker (``helpers.multirank.run_ranks``): the checkpoint tools' logits check on a rank
that believes GPUs are visible (``torch.cuda.is_available`` patched True, two devices), where any
device switch fails. It must run on the host over gloo all the same; returns rank 0's logits as
nested lists (a tensor would go back through shared memory the exiting rank takes with it)."""

from __future__ import annotations

import os

import torch


def _no_cuda_calls(*_args, **_kwargs):
    raise AssertionError("the logits check called into CUDA")


def logits_with_cuda_visible(source, port: int, ids: torch.Tensor) -> list | None:
    from checkpoints_tools import logits_check

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 2
    torch.cuda.set_device = _no_cuda_calls
    torch.cuda.manual_seed = _no_cuda_calls
    rank = int(os.environ["RANK"])
    logits = logits_check._rank_logits(source, rank, port, ids)
    return logits.tolist() if rank == 0 else None
