"""Where each parameter is cut under tensor parallelism, and merging / splitting full tensors
across TP ranks without building the model.

Column-parallel (q/k/v, gate/up, their biases), the vocabulary rows of the embedding and LM head:
dim 0. Row-parallel (o_proj, down_proj): dim 1. ParScale prefixes [P, kv_heads, L, d]: dim 1 (by
KV head). Norms, the aggregator and the 'mlp' prefix reparameterisation are replicated. The
vocabulary rows are padded to ``padded_vocab_size`` for the TP they are split for, and trimmed to
the real vocabulary when merged (padding depends on the TP). The model marks the same dims on its
parameters (``partition_dim``); ``check_model`` compares the two."""

from __future__ import annotations

import torch

from ..config.model import ModelConfig
from ..errors import UserError
from ..model.lm import padded_vocab_size
from ..model.param_groups import VOCAB_ROWS

_DIM0 = (".q_proj.", ".k_proj.", ".v_proj.", ".gate_proj.", ".up_proj.")
_DIM1 = (".o_proj.weight", ".down_proj.weight", ".prefix.prefix_k", ".prefix.prefix_v")


def partition_dim(name: str) -> int | None:
    if name in VOCAB_ROWS or any(part in name for part in _DIM0):
        return 0
    if any(name.endswith(part) for part in _DIM1):
        return 1
    return None


def tp_problem(model: ModelConfig, tp: int) -> str | None:
    """Why this model cannot be split ``tp`` ways (None if it can)."""
    keys = model.tp_indivisible(tp)
    return f"TP={tp} does not divide model.{keys[0]}={getattr(model, keys[0])}" if keys else None


def merge(rank_states: list[dict[str, torch.Tensor]], vocab: int) -> tuple[dict[str, torch.Tensor], float]:
    """Full tensors from each TP rank's slices; also the largest difference between ranks' copies
    of a replicated tensor (0 when the run kept them in sync, as it should)."""
    full, drift = {}, 0.0
    first = rank_states[0]
    for name in first:
        parts = [state[name] for state in rank_states]
        dim = partition_dim(name) if len(parts) > 1 else None
        if dim is None:
            drift = max([drift] + [(p.float() - parts[0].float()).abs().max().item() for p in parts[1:]])
            full[name] = parts[0]
        else:
            full[name] = torch.cat(parts, dim=dim)
        if name in VOCAB_ROWS:
            full[name] = full[name][:vocab]
    return full, drift


def split(full: dict[str, torch.Tensor], tp: int, model: ModelConfig, vocab: int) -> list[dict[str, torch.Tensor]]:
    """Each TP rank's slices of ``full`` (vocabulary rows padded for ``tp``)."""
    if problem := tp_problem(model, tp):
        raise UserError(problem)
    rows = padded_vocab_size(vocab, model.pad_vocab_to_multiple_of, tp)
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for name, tensor in full.items():
        if name in VOCAB_ROWS:
            tensor = torch.cat([tensor[:rows], tensor.new_zeros(max(0, rows - tensor.shape[0]), *tensor.shape[1:])])
        dim = partition_dim(name)
        for rank in range(tp):
            piece = tensor if dim is None else tensor.chunk(tp, dim=dim)[rank]
            states[rank][name] = piece.contiguous().clone() if dim is not None else piece
    return states


def check_model(model: torch.nn.Module) -> None:
    """The model's own TP marks agree with ``partition_dim`` (a guard for converters)."""
    for name, param in model.named_parameters():
        marked = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
        if marked != partition_dim(name):
            raise UserError(f"{name}: the model splits it along {marked}, the converters along {partition_dim(name)}")
