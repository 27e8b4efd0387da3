"""Moving full (unsharded) weights in and out of a tensor-parallel model: gather every TP slice
(and ZeRO-3 partition) into a full state dict, or load a full state dict into this rank's slices.
Vocabulary rows are padded or trimmed to the model's padded size (it depends on TP); ParScale
parameters missing from a dense state dict keep their fresh initialisation (dense -> ParScale)."""

from __future__ import annotations

import torch

from ..errors import UserError
from ..model.param_groups import VOCAB_ROWS, parscale_parameter
from ..utils.collectives import all_gather_cat


def gather_full_state(model: torch.nn.Module, values: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full tensors of every parameter, on every rank (call on all ranks; ZeRO-3 params must be
    gathered by the caller, e.g. inside ``deepspeed.zero.GatheredParameters``). ``values``: this
    rank's slice to use instead of a parameter's own data (e.g. its fp32 master weight)."""
    from megatron.core import parallel_state as ps

    group, size = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()
    values = values or {}
    state = {}
    for name, param in model.named_parameters():
        data = values.get(name, param).detach().contiguous()
        if size > 1 and getattr(param, "tensor_model_parallel", False):
            data = all_gather_cat(data, param.partition_dim, group)
        state[name] = data.cpu().clone()
    return state


def _fit_rows(tensor: torch.Tensor, rows: int, name: str, source: str) -> torch.Tensor:
    """Vocabulary rows padded with zeros to the model's padded size (padding rows no id reaches);
    more rows than the model has is an error (a different vocabulary is never cut to fit)."""
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] > rows:
        raise UserError(
            f"{source}: {name} has {tensor.shape[0]} vocabulary rows, the model {rows} (a different vocabulary; "
            "model.vocab_size must hold the checkpoint's)"
        )
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def load_full_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, allow_new_parscale: bool = False
) -> list[str]:
    """Copy ``state`` (full tensors) into this rank's slices; returns the ParScale parameters that
    were not in ``state`` and kept their initialisation. Any other mismatch is an error naming
    ``source``."""
    from megatron.core import parallel_state as ps

    rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in state]
    new = [n for n in missing if parscale_parameter(n)]
    if (missing and not allow_new_parscale) or len(new) != len(missing):
        raise UserError(
            f"{source}: lacks {', '.join(sorted(set(missing) - set(new if allow_new_parscale else []))[:6])}"
        )
    unexpected = [n for n in state if n not in params and state[n] is not None]
    if unexpected:
        raise UserError(
            f"{source}: has parameters this model does not: {', '.join(unexpected[:6])} "
            "(a ParScale checkpoint into a dense config? set parscale.streams to match)"
        )
    slices = {}
    for name, param in params.items():
        if name not in state:
            continue
        full = state[name]
        if name in VOCAB_ROWS:
            rows = param.shape[0] * (size if getattr(param, "tensor_model_parallel", False) else 1)
            full = _fit_rows(full, rows, name, source)
        if size > 1 and getattr(param, "tensor_model_parallel", False):
            dim = param.partition_dim
            chunk = full.shape[dim] // size
            full = full.narrow(dim, rank * chunk, chunk)
        slices[name] = full
    _copy_checked(params, slices, source, f" at TP={size}")
    return new


def load_rank_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy this TP rank's own slices (e.g. from ``parscale convert reshard``) into the model: the
    same names and shapes, or an error naming ``source``."""
    params = dict(model.named_parameters())
    if state.keys() != params.keys():
        raise UserError(f"{source}: its tensors do not match this model ({sorted(state.keys() ^ params.keys())[:4]})")
    _copy_checked(params, state, source, "")


def _copy_checked(params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str, where: str) -> None:
    for name, tensor in tensors.items():
        if tensor.shape != params[name].shape:
            raise UserError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(params[name].shape)}{where} (check the model section of the config)"
            )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(params[name].dtype))
