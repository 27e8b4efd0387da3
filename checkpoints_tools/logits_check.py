"""Each converter checks its own output: the logits of the result on a fixed input against the
logits of the source, each run at its own TP. A TP > 1 checkpoint runs as that many local
processes, each loading only its own slices, so the TP code path itself is checked. Always on the
CPU over gloo, also where GPUs are visible: the check must not need TP GPUs, nor NCCL groups
holding host tensors.

A source is anything with ``model``, ``parscale``, ``vocab``, ``tp`` and ``rank_state(rank)``
(the slices of one TP rank): a trainer checkpoint, or full weights split on the fly."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from pipeline.checkpoint import tp_partition
from pipeline.checkpoint.portable import CheckpointError, read_config, read_weights
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import local_group
from pipeline.distributed.runtime import free_port
from pipeline.model import ParScaleLM


class FullWeights:
    """Full (unsharded) weights, split for ``tp`` ranks on demand."""

    def __init__(
        self, state: dict[str, torch.Tensor], model: ModelConfig, parscale: ParScaleConfig, vocab: int, tp: int = 1
    ):
        self.state, self.model, self.parscale, self.vocab, self.tp = state, model, parscale, vocab, tp

    @classmethod
    def portable(cls, directory: str | Path, tp: int = 1) -> FullWeights:
        meta = read_config(directory)
        return cls(
            read_weights(directory),
            ModelConfig.model_validate(meta["model"]),
            ParScaleConfig.model_validate(meta["parscale"]),
            meta["vocab_size"],
            tp,
        )

    def rank_state(self, rank: int) -> dict[str, torch.Tensor]:
        return tp_partition.split(self.state, self.tp, self.model, self.vocab)[rank]


def fixed_input(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))


def _rank_logits(source, rank: int, port: int | None, ids: torch.Tensor) -> torch.Tensor:
    with local_group(rank, source.tp, source.tp, port, device="cpu"):  # explicit: never NCCL, never set_device
        model = ParScaleLM(source.model, source.parscale, source.vocab, tp_rank=rank, tp_size=source.tp).eval()
        tp_partition.check_model(model)
        state, params = source.rank_state(rank), dict(model.named_parameters())
        if state.keys() != params.keys():
            raise CheckpointError(
                f"TP rank {rank}: missing {sorted(params.keys() - state.keys())[:4]}, "
                f"unexpected {sorted(state.keys() - params.keys())[:4]}"
            )
        with torch.no_grad():
            for name, param in params.items():
                if state[name].shape != param.shape:
                    raise CheckpointError(
                        f"TP rank {rank}: {name} has shape {tuple(state[name].shape)}, "
                        f"the model expects {tuple(param.shape)}"
                    )
                param.copy_(state[name])
            return model.full_logits(model(ids).logits)


def _worker(rank: int, source, port: int, ids: torch.Tensor, out: str, env: dict[str, str]) -> None:
    os.environ.update(env)  # the caller's, not the fork server's (started perhaps by an earlier call)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // source.tp))
    logits = _rank_logits(source, rank, port, ids)
    if rank == 0:
        torch.save(logits, out)


def logits(source, ids: torch.Tensor) -> torch.Tensor:
    if source.tp == 1:
        return _rank_logits(source, 0, None, ids)

    # forked from a server that imported this module (torch, megatron-core) once, not imported per rank
    mp.set_forkserver_preload([__name__])
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "logits.pt")
        env = {**os.environ, "DS_ACCELERATOR": "cpu"}  # the workers' DeepSpeed, like their world, on the host
        args = (source, free_port(), ids, out, env)
        mp.start_processes(_worker, args=args, nprocs=source.tp, start_method="forkserver")
        return torch.load(out, weights_only=True)


def check(before, after, what: str) -> str:
    """Compare the two sources' logits; raises if they differ beyond the tolerance (0 when both run
    at the same TP, else 1e-4 relative to the largest logit: TP changes the order of sums)."""
    ids = fixed_input(before.vocab)
    a, b = logits(before, ids), logits(after, ids)
    diff = (a - b).abs().max().item()
    tolerance = 0.0 if before.tp == after.tp else 1e-4 * max(1.0, a.abs().max().item())
    message = (
        f"{what}: logits on a fixed [2, 16] input, TP={before.tp} vs TP={after.tp}: "
        f"max |diff| {diff:.2e} (tolerance {tolerance:.1e})"
    )
    if diff > tolerance:
        raise CheckpointError(f"verification failed: {message}")
    return message
