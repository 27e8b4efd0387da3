"""Start (and stop) a distributed process: env, threads, torch.distributed (gloo on CPU, NCCL on
GPU), DeepSpeed's comm layer, megatron-core's TP x DP groups, seeds. Call once per process.

A launched rank (``init_distributed``) takes NCCL whenever CUDA is visible; a world made outside a
launcher (``local_group``, ``single_process``: the checkpoint tools, the tests) runs on the host
over gloo unless its caller asks for a CUDA device, so a tool that checks on the CPU never lands on
NCCL groups just because the machine has GPUs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config.errors import ErrorAt, key_error
from ..config.job import JobConfig
from ..errors import UserError
from ..utils import collectives
from ..utils.known_warnings import quiet_known_warnings
from . import runtime
from .seeding import seed_everything


@dataclass(frozen=True)
class ParallelContext:
    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    backend: str
    device: str  # "cpu" or "cuda:N"
    threads: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_dict(self) -> dict:
        return asdict(self)


def _pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def backend_for(device: str) -> str:
    """The backend of a world made outside a launcher: NCCL for a CUDA device, gloo for the host."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def preferred_device() -> str:
    """``cuda`` where a GPU is visible, else ``cpu``: for the commands that run a model for its
    results (eval, generate, decode timing). The checkpoint tools stay on the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _visible_note() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"


def check_gpus_per_node(local_rank: int, tp: int, error_at: ErrorAt = key_error) -> None:
    """Refuse, naming ``parallel.data_parallel_size``, a node that starts more NCCL ranks than it
    has visible GPUs (torch would fail later with a bare "invalid device ordinal")."""
    if not torch.cuda.is_available():
        raise error_at("parallel.backend", "nccl needs CUDA, and no GPU is visible")
    gpus = torch.cuda.device_count()
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE") or 0), local_rank + 1)
    if local <= gpus:
        return
    fits = f"on one node: data_parallel_size={gpus // tp}" if gpus >= tp else "no data_parallel_size fits"
    raise error_at(
        "parallel.data_parallel_size",
        f"{local} processes on this node but {gpus} visible GPU(s){_visible_note()}: each NCCL rank needs its "
        f"own GPU, so tensor_parallel_size x data_parallel_size per node must be at most {gpus} "
        f"({fits} at tensor_parallel_size {tp}); set it, or make more GPUs visible",
    )


def init_distributed(cfg: JobConfig, error_at: ErrorAt = key_error, *, timeout_minutes: int = 30) -> ParallelContext:
    """Bring up every process group for ``cfg.parallel``; errors name the config key (``error_at``:
    ``LoadedConfig.error`` points at its file and line)."""
    par = cfg.parallel
    runtime.ensure_launcher_env()
    runtime.set_cache_defaults()
    runtime.set_connection_default(par.tensor_parallel_size)
    quiet_known_warnings()  # idempotent: also for a caller that reset the warning filters
    threads = runtime.configure_threads()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])

    tp = par.tensor_parallel_size
    if world_size % tp:
        raise error_at("parallel.tensor_parallel_size", f"{tp} does not divide the world size {world_size}")
    dp = world_size // tp
    if par.data_parallel_size is not None and par.data_parallel_size != dp:
        raise error_at(
            "parallel.data_parallel_size",
            f"{par.data_parallel_size} x tensor_parallel_size {tp} != world size {world_size} "
            f"(launch {par.data_parallel_size * tp} processes, or unset it to derive {dp})",
        )
    if problem := par.batch_problem(dp):
        raise error_at("parallel.global_batch_size", problem)

    backend = _pick_backend(par.backend)
    if backend == "nccl":
        check_gpus_per_node(local_rank, tp, error_at)
    device = _start_groups(tp, backend, rank, world_size, local_rank, timeout_minutes)
    seed_everything(cfg.run.seed, cuda=device != "cpu")
    return _context(rank, world_size, local_rank, tp, backend, device, threads)


def _start_groups(tp: int, backend: str, rank: int, world_size: int, cuda_index: int, timeout_minutes: int) -> str:
    """torch.distributed, DeepSpeed's comm layer and megatron-core's TP x DP groups; returns the
    device: ``cuda:<cuda_index>`` under NCCL (made current), else the host (no CUDA call at all)."""
    if backend == "nccl":
        torch.cuda.set_device(cuda_index)
        device = f"cuda:{cuda_index}"
    else:
        device = "cpu"
    runtime.select_deepspeed_accelerator(device)
    if device == "cpu":
        runtime.skip_deepspeed_shm_build()

    import deepspeed

    timeout = timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=timeout,
            rank=rank,
            world_size=world_size,
            device_id=torch.device(device) if backend == "nccl" else None,
        )
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout, auto_mpi_discovery=False)

    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            distributed_timeout_minutes=timeout_minutes,
            create_gloo_process_groups=backend != "gloo",
        )
    collectives.start_host_group()
    return device


def _context(rank, world_size, local_rank, tp, backend, device, threads) -> ParallelContext:
    from megatron.core import parallel_state

    return ParallelContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=tp,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=world_size // tp,
        backend=backend,
        device=device,
        threads=threads,
    )


@contextlib.contextmanager
def local_group(
    rank: int = 0, world_size: int = 1, tp: int = 1, port: int | None = None, seed: int = 1234, device: str = "cpu"
) -> Iterator[ParallelContext]:
    """Rank ``rank`` of a world of processes on this machine, for tools and tests that run
    megatron-core layers outside a launcher: every rank passes the same ``port``. On the host over
    gloo, also where GPUs are visible, unless ``device`` asks for CUDA (``cuda``: rank r on GPU r,
    ``cuda:N`` for a world of one; over NCCL). The env:// variables it sets are removed on exit."""
    backend = backend_for(device)
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but no GPU is visible here{_visible_note()}")
    index = torch.device(device).index
    with runtime.own_world():
        if world_size > 1:
            os.environ.update(runtime.launcher_env(rank, world_size, port))
        runtime.ensure_launcher_env()
        runtime.set_cache_defaults()
        runtime.set_connection_default(tp)
        quiet_known_warnings()  # idempotent: also for a caller that reset the warning filters
        try:
            cuda_index = rank if index is None else index
            started = _start_groups(tp, backend, rank, world_size, cuda_index, timeout_minutes=5)
            seed_everything(seed, cuda=started != "cpu")
            yield _context(rank, world_size, rank, tp, backend, started, torch.get_num_threads())
        finally:
            destroy_distributed()


def single_process(seed: int = 1234, device: str = "cpu") -> contextlib.AbstractContextManager[ParallelContext]:
    """A world of one, for tools and tests that run megatron-core layers in one process: on the host
    (gloo) unless ``device`` is a CUDA device (``preferred_device()`` picks one where visible)."""
    return local_group(seed=seed, device=device)


def destroy_distributed() -> None:
    """Tear down megatron-core's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    collectives.stop_host_group()
    if dist.is_initialized():
        dist.destroy_process_group()
    import deepspeed.comm.comm as ds_comm

    ds_comm.cdb = None


@contextlib.contextmanager
def distributed_world(cfg: JobConfig, error_at: ErrorAt = key_error) -> Iterator[ParallelContext]:
    """The process groups of ``cfg.parallel`` for the block: brought up on entry, torn down on exit
    (also after an error, or a start that failed halfway), so the process can run another world."""
    try:
        yield init_distributed(cfg, error_at)
    finally:
        destroy_distributed()
