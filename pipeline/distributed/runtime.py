"""Process-level settings applied before torch.distributed starts: a single process gets the
env:// variables it would have under torchrun, threads are split between local ranks, caches go
to a project-local folder (Triton's to a node-local one), and DeepSpeed skips a CPU-only op build
that training never uses."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launcher_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The env:// variables torchrun sets for local rank ``rank`` of ``world_size`` on this machine."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def own_world() -> Iterator[None]:
    """Inside, this process is a world of its own: the env:// variables of any launcher that started
    it are set aside (and put back after), so a rank made here is rank 0 of 1 on a fresh port."""
    saved = {key: os.environ.pop(key) for key in LAUNCHER_VARS if key in os.environ}
    try:
        yield
    finally:
        for key in LAUNCHER_VARS:
            os.environ.pop(key, None)
        os.environ.update(saved)


def ensure_launcher_env() -> bool:
    """Fill in a world of one when no launcher set the env:// variables. Returns True if it did.

    Without them DeepSpeed tries MPI discovery and fails on a missing mpi4py.
    """
    if "WORLD_SIZE" in os.environ:  # a launcher started us: it must have set the rest
        missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE is set but {', '.join(missing)} is not: use torchrun or set them")
        return False
    defaults = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    for key in LAUNCHER_VARS:
        os.environ.setdefault(key, defaults[key])
    return True


def cpu_threads_per_rank() -> int:
    """CPUs this process may use, shared evenly between the ranks on this node."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    # torchrun says LOCAL_WORLD_SIZE, DeepSpeed's launcher LOCAL_SIZE
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1")
    return max(1, cpus // max(1, local_world))


def configure_threads() -> int:
    """Honour OMP_NUM_THREADS if set (torchrun sets 1), else give each local rank its share."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or cpu_threads_per_rank()
    torch.set_num_threads(threads)
    return threads


def cache_root() -> Path:
    """Project-local cache folder: $PARSCALE_CACHE_DIR, else ./.cache under the working directory."""
    return Path(os.environ.get("PARSCALE_CACHE_DIR", Path.cwd() / ".cache")).resolve()


def user_name() -> str:
    """This user's login name, else ``uid<N>`` (a container may have no passwd entry for it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def node_local_root() -> Path:
    """A per-user folder on this node's temp filesystem ($TMPDIR, else /tmp): for caches that many
    processes write at once, which a shared filesystem (the checkout under SLURM) handles badly."""
    return Path(tempfile.gettempdir()) / f"parscale-{user_name()}"


def set_cache_defaults() -> None:
    """Point tool caches that default to the home directory elsewhere, unless set: torch extensions
    to the project cache; Triton's kernels and launcher builds to a node-local folder, since every
    rank compiles into it concurrently and a shared filesystem then fails with stale handles or
    EBUSY. (TorchInductor's own cache already defaults to the node's temp folder.)"""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(node_local_root() / "triton"))


def set_connection_default(tp: int) -> None:
    """``CUDA_DEVICE_MAX_CONNECTIONS=1`` (unless set) where TP > 1, before any CUDA context exists.

    One hardware queue makes kernels start in launch order, which megatron-core's TP layers rely on
    to overlap their async input-gradient all-reduce with the weight-gradient matmul (and warn
    without). It also serialises every other stream, which costs ZeRO 3 its prefetch and reduce
    overlap, so with TP = 1 (no TP communication to overlap) it is left alone."""
    if tp > 1:
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")


def select_deepspeed_accelerator(device: str) -> None:
    """Tell DeepSpeed which accelerator to use before it is imported (it otherwise probes and warns)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if device == "cpu" else "cuda")


def skip_deepspeed_shm_build() -> None:
    """DeepSpeed's comm layer JIT-builds a CPU shared-memory op (~65 s cold) on every CPU start;
    gloo training never calls it, so replace the builder before any DeepSpeed backend exists."""
    import deepspeed.comm.torch  # noqa: F401  (import registers the module)

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
