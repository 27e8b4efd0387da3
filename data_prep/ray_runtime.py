"""A Ray runtime for the prep job: attach to a cluster when given its address, else start a
local one sized to this machine, with the settings that keep it quiet and bounded; and the feed
that keeps a pool of actors busy."""

from __future__ import annotations

import contextlib
import os
import tempfile
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
        ray.shutdown()


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
    """Hands ``jobs`` out to ``actors`` (``call(actor, job)`` starts one and returns its ref), up to
    ``depth`` queued on each, so an actor starts its next job while the driver is busy with the
    last result; once no more jobs are left than actors, only an idle actor gets one, so none ends
    holding two while another idles. Iterating yields the results in the order they finish; the
    first jobs start when it is built."""

    def __init__(self, actors: list, call: Callable, jobs: list, depth: int = 2):
        self.call, self.jobs, self.depth = call, list(reversed(jobs)), depth
        self.pending: dict = {}  # ref -> actor
        self.load = {id(a): 0 for a in actors}
        for _ in range(depth):
            for actor in actors:
                self._give(actor)

    def _give(self, actor) -> None:
        queued = self.load[id(actor)]
        if self.jobs and queued < self.depth and (queued == 0 or len(self.jobs) > len(self.load)):
            self.pending[self.call(actor, self.jobs.pop())] = actor
            self.load[id(actor)] += 1

    def __iter__(self) -> Iterator:
        import ray

        while self.pending:
            [ref], _ = ray.wait(list(self.pending), num_returns=1)
            actor = self.pending.pop(ref)
            self.load[id(actor)] -= 1
            self._give(actor)
            yield ray.get(ref)
