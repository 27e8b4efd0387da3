"""Every torch.distributed collective of the project goes through here (a test enforces it).

Why one module: NCCL takes only CUDA tensors and gloo prefers host tensors, so a collective on a
tensor made with ``torch.tensor(...)`` works on a CPU test machine and crashes the first step on
a GPU cluster. Each function here moves its tensor to the device of the group it runs on and
hands the result back on the caller's device. Host-side bookkeeping (the stop agreement) runs on
purpose over a dedicated gloo group, asynchronously, so it never waits for the GPU.

Groups: ``None`` is the default (world) group; the others come from megatron-core's
parallel_state. :func:`start_host_group` / :func:`stop_host_group` are called by the bootstrap.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
_host_group = None


def device_for_backend(backend: str, device_index: int | None = None) -> torch.device | None:
    """The device a group's tensors must live on: CUDA for NCCL, the host for gloo; None where
    the group takes both (a ``cpu:gloo,cuda:nccl`` group)."""
    backend = backend.lower()
    if "nccl" in backend and "gloo" in backend:
        return None
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device() if device_index is None else device_index)
    return torch.device("cpu")


def group_device(group=None) -> torch.device | None:
    return device_for_backend(str(dist.get_backend(group)))


def _on_group_device(tensor: torch.Tensor, group) -> torch.Tensor:
    device = group_device(group)
    if device is None or tensor.device == device:
        return tensor
    return tensor.to(device)


def _world_of(group) -> int:
    return dist.get_world_size(group)


def all_reduce(tensor: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """In-place all-reduce of ``tensor`` (sum, max or min) over ``group``; returns ``tensor``."""
    if not dist.is_initialized() or _world_of(group) == 1:
        return tensor
    work = _on_group_device(tensor, group)
    dist.all_reduce(work, op=_OPS[op], group=group)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_gather_cat(tensor: torch.Tensor, dim: int, group=None) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` (rank order), on the caller's device."""
    if not dist.is_initialized() or _world_of(group) == 1:
        return tensor
    work = _on_group_device(tensor.detach().contiguous(), group)
    parts = [torch.empty_like(work) for _ in range(_world_of(group))]
    dist.all_gather(parts, work, group=group)
    return torch.cat(parts, dim=dim).to(tensor.device)


def all_gather_object(obj: Any, group=None) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (torch places the bytes on the right device)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * _world_of(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def barrier(group=None) -> None:
    if dist.is_initialized():
        dist.barrier(group=group)


# ---------------------------------------------------------------------- host-side bookkeeping


def start_host_group() -> None:
    """A gloo group over the whole world for host-side flags (collective: every rank calls it)."""
    global _host_group
    if _host_group is None and dist.is_initialized():
        _host_group = dist.new_group(backend="gloo")


def stop_host_group() -> None:
    global _host_group
    _host_group = None  # destroyed with the default group


def host_group():
    if _host_group is None:
        raise RuntimeError("the host (gloo) group is not started: call pipeline.distributed.init_distributed first")
    return _host_group


class Agreement:
    """A flag any rank may raise, agreed by every rank one call later without blocking.

    ``post(flag)`` starts an asynchronous MAX all-reduce of this rank's flag over the host gloo
    group and returns the result of the previous post (False at the first). Every rank posts
    once per step, so every rank reads the same result at the same step: a stop requested on
    one rank stops all ranks together one step later. No CUDA tensor is involved, so it never
    waits for the GPU."""

    def __init__(self) -> None:
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._single = not dist.is_initialized() or dist.get_world_size() == 1

    def post(self, flag: bool) -> bool:
        previous = self.result()
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        if self._single:
            self._pending = (None, value)
        else:
            self._pending = (dist.all_reduce(value, op=dist.ReduceOp.MAX, group=host_group(), async_op=True), value)
        return previous

    def result(self) -> bool:
        """The agreed value of the last post (waits for it; consumed: a second call gives False)."""
        if self._pending is None:
            return False
        work, value = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        return bool(value.item())
