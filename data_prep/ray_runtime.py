"""A Ray runtime for the prep job: attach to a cluster when given its address, else start a
local one sized to this machine, with the settings that keep it quiet and bounded."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
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
