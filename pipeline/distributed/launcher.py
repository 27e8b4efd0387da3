"""Start a module under torchrun on this node (or, for one process, plainly): the command, its
environment, and a dry run that prints both. Multi-node, SLURM and DeepSpeed-hostfile launchers
build on the same command."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from ..config.training import ParallelConfig
from .runtime import LAUNCHER_VARS, cpu_threads_per_rank


def processes_per_job(par: ParallelConfig) -> int:
    """How many processes a one-node job of ``par`` starts: TP x ``data_parallel_size`` when set;
    unset, TP x (visible GPUs // TP) on GPUs (every GPU, in whole TP groups; at least one group),
    and one TP group on the CPU (or with ``backend: gloo``). As ``launch/lib.sh`` counts them."""
    tp = par.tensor_parallel_size
    if par.data_parallel_size is not None:
        return tp * par.data_parallel_size
    on_gpus = par.backend == "nccl" or (par.backend == "auto" and torch.cuda.is_available())
    return tp * max(1, torch.cuda.device_count() // tp) if on_gpus else tp


@dataclass(frozen=True)
class TorchrunLaunch:
    module: str
    args: list[str]
    nproc_per_node: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # host:port of the first node; None = --standalone
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def single_process(self) -> bool:
        """One process on one node: no launcher needed (the process makes itself a world of one)."""
        return self.nproc_per_node == 1 and self.nnodes == 1 and self.rdzv_endpoint is None

    def command(self) -> list[str]:
        if self.single_process:
            return [sys.executable, "-m", self.module, *self.args]
        cmd = [sys.executable, "-m", "pipeline.distributed.torchrun_main", f"--nproc_per_node={self.nproc_per_node}"]
        if self.rdzv_endpoint is None:
            cmd.append("--standalone")
        else:
            cmd += [f"--nnodes={self.nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={self.rdzv_endpoint}"]
        return cmd + ["-m", self.module, *self.args]

    def env(self) -> dict[str, str]:
        """Variables set on top of the caller's environment."""
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cpu_threads_per_rank() // self.nproc_per_node))
        return {"OMP_NUM_THREADS": threads, **self.extra_env}

    def describe(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env().items()))
        return f"{env} {shlex.join(self.command())}"

    def run(self, dry_run: bool = False) -> int:
        if dry_run:
            print(self.describe())
            return 0
        env = {**os.environ, **self.env()}
        if self.single_process:  # not a rank of some outer launch
            env = {k: v for k, v in env.items() if k not in LAUNCHER_VARS}
        return subprocess.call(self.command(), env=env)
