"""Moving full (unsharded) weights in and out of a tensor-parallel model: gather every TP slice
(and ZeRO-3 partition) into a full state dict, or load a full state dict into this rank's slices.
Vocabulary rows are padded or trimmed to the model's padded size (it depends on TP); ParScale
parameters missing from a dense state dict keep their fresh initialisation (dense -> ParScale)."""

from __future__ import annotations

import torch

from ..errors import JobError
from ..utils.collectives import all_gather_cat

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


def _is_parscale(name: str) -> bool:
    return ".prefix." in name or "aggregate_layer" in name


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors of every parameter, on every rank (call on all ranks; ZeRO-3 params must be
    gathered by the caller, e.g. inside ``deepspeed.zero.GatheredParameters``)."""
    from megatron.core import parallel_state as ps

    group, size = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()
    state = {}
    for name, param in model.named_parameters():
        data = param.detach().contiguous()
        if size > 1 and getattr(param, "tensor_model_parallel", False):
            data = all_gather_cat(data, param.partition_dim, group)
        state[name] = data.cpu().clone()
    return state


def _fit_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] > rows:
        return tensor[:rows]
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def load_full_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                    allow_new_parscale: bool = False) -> list[str]:
    """Copy ``state`` (full tensors) into this rank's slices; returns the ParScale parameters that
    were not in ``state`` and kept their initialisation. Any other mismatch is an error naming
    ``source``."""
    from megatron.core import parallel_state as ps

    rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in state]
    new = [n for n in missing if _is_parscale(n)]
    if (missing and not allow_new_parscale) or len(new) != len(missing):
        raise JobError(f"{source}: lacks {', '.join(sorted(set(missing) - set(new if allow_new_parscale else []))[:6])}")
    unexpected = [n for n in state if n not in params and state[n] is not None]
    if unexpected:
        raise JobError(f"{source}: has parameters this model does not: {', '.join(unexpected[:6])} "
                       "(a ParScale checkpoint into a dense config? set parscale.streams to match)")
    with torch.no_grad():
        for name, param in params.items():
            if name not in state:
                continue
            full = state[name]
            if name in VOCAB_ROWS:
                full = _fit_rows(full, param.shape[0] * (size if getattr(param, "tensor_model_parallel", False) else 1))
            if size > 1 and getattr(param, "tensor_model_parallel", False):
                dim = param.partition_dim
                chunk = full.shape[dim] // size
                full = full.narrow(dim, rank * chunk, chunk)
            if full.shape != param.shape:
                raise JobError(f"{source}: {name} has shape {tuple(full.shape)}, the model expects "
                               f"{tuple(param.shape)} at TP={size} (check the model section of the config)")
            param.copy_(full.to(param.dtype))
    return new
