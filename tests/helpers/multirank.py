"""Several ranks from inside a test, without a launcher: ``run_ranks(fn, n, *args)`` starts ``n``
processes that each take the caller's environment plus the variables torchrun would set (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_*), call ``fn(*args)`` (which brings up its own gloo process groups,
as the code under test does) and send back what it returns. Much cheaper than a torchrun subprocess:
the ranks are forked from a server that imported torch, megatron-core and the trainer once per
session, so a rank starts in milliseconds, not seconds. ``fn`` must be importable by name (a
module-level function)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable

from pipeline.distributed.runtime import LAUNCHER_VARS, free_port, launcher_env

#: imported once by the fork server (the ranks' parent), not by every rank
PRELOAD = ["pipeline.training.trainer"]


def _rank_main(fn: Callable, rank: int, world_size: int, port: int, results, args: tuple, env: dict) -> None:
    import torch

    os.environ.clear()
    os.environ.update(env, **launcher_env(rank, world_size, port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)  # the OpenMP runtime read the server's environment when torch loaded
    try:
        results.put((rank, True, fn(*args)))
    except BaseException:  # noqa: B036 - the parent reports it
        results.put((rank, False, traceback.format_exc()))


def run_ranks(fn: Callable, world_size: int, *args, timeout: float = 300) -> list:
    """``fn(*args)`` on ranks 0..world_size-1; their return values in rank order. A rank that
    raises fails the call with its traceback; one that hangs, after ``timeout`` seconds."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    results = ctx.Queue()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    procs = [
        ctx.Process(target=_rank_main, args=(fn, rank, world_size, port, results, args, env), daemon=True)
        for rank in range(world_size)
    ]
    try:
        for proc in procs:
            proc.start()
        got: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(got) < world_size:
            try:
                rank, ok, value = results.get(timeout=1.0)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in got]
                if dead:
                    raise RuntimeError(f"rank(s) {dead} exited without a result") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{world_size - len(got)} rank(s) gave no result in {timeout} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            got[rank] = value
        return [got[rank] for rank in range(world_size)]
    finally:
        for proc in procs:
            if proc.pid is not None:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
