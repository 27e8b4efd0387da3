"""A Ray runtime for the prep job: attach to a cluster when given its address, else start a
local one sized to this machine, with the settings that keep it quiet and bounded; and the feed
that keeps a pool of actors busy."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

LOCAL_OBJECT_STORE = 512 * 1024**2  # only small summaries travel through it


def _temp_dir() -> str:
    """Ray's session folder; kept short because it holds unix sockets (path limit ~107 bytes)."""
    base = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    return str(base if len(str(base)) <= 48 else Path("/tmp") / f"ray-{os.getuid()}")


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[None]:
    import ray

    if ray.is_initialized():  # a caller (or a test) already holds a runtime
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE, _temp_dir=_temp_dir(), **common)
    try:
        yield
    finally:
        if not address:
            _stop_monitor()
        ray.shutdown()


def _stop_monitor() -> None:
    """Stop the autoscaler monitor of a local runtime before ``ray.shutdown()``, which would cost a
    second: it stops the GCS first, and the monitor answers the SIGTERM that follows by reporting to
    the GCS, so it is only killed after a one-second grace period. The monitor has nothing to do on
    one machine; if this Ray keeps its processes elsewhere, nothing is done and shutdown is as slow."""
    import ray

    try:
        node = ray._private.worker._global_node
        monitors = node.all_processes.get(ray._private.ray_constants.PROCESS_TYPE_MONITOR, [])
    except AttributeError:
        return
    for info in monitors:
        info.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            info.process.wait(timeout=5)


def local_cpus() -> int:
    """CPUs this process may use (its affinity mask), what a local runtime is sized to."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


class ActorFeed:
    """Hands the jobs of ``jobs`` (a deque others may take from too) out to ``actors``
    (``call(actor, job)`` starts one and returns its ref), up to ``depth`` queued on each, so an
    actor starts its next job while the driver is busy with the last result; once no more jobs are
    left than actors, only an idle actor gets one, so none ends holding two while another idles.
    Iterating yields the results in the order they finish; the first jobs start when it is built."""

    def __init__(self, actors: list, call: Callable, jobs: deque, depth: int = 2):
        self.call, self.jobs, self.depth = call, jobs, depth
        self.pending: dict = {}  # ref -> actor
        self.load = {id(a): 0 for a in actors}
        for _ in range(depth):
            for actor in actors:
                self._give(actor)

    def _give(self, actor) -> None:
        queued = self.load[id(actor)]
        if queued < self.depth and (queued == 0 or len(self.jobs) > len(self.load)):
            try:
                job = self.jobs.popleft()
            except IndexError:  # none left
                return
            self.pending[self.call(actor, job)] = actor
            self.load[id(actor)] += 1

    def __iter__(self) -> Iterator:
        import ray

        while self.pending:
            [ref], _ = ray.wait(list(self.pending), num_returns=1)
            actor = self.pending.pop(ref)
            self.load[id(actor)] -= 1
            self._give(actor)
            yield ray.get(ref)
