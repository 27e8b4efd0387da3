"""Wait until a Ray cluster started by hand or by ``launch/slurm/prep.sbatch`` has all its nodes,
so the prep job attaches to the whole cluster rather than to whichever nodes joined first.

    python -m data_prep.ray_cluster --address gpu01:6379 --nodes 4 --timeout 300
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def wait_for_nodes(address: str, nodes: int, timeout: float, poll: float = 1.0) -> int:
    """Block until ``nodes`` Ray nodes are alive at ``address``; returns the count, raises TimeoutError."""
    import ray

    deadline = time.monotonic() + timeout
    while not _port_open(address):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Ray head answers at {address} after {timeout:.0f} s")
        time.sleep(poll)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        while True:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= nodes:
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray cluster at {address}: {alive} of {nodes} nodes joined in {timeout:.0f} s")
            time.sleep(poll)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.ray_cluster",
        description="Wait until a Ray cluster has NODES alive nodes (exit 1 on timeout).",
    )
    parser.add_argument("--address", required=True, help="the head's host:port")
    parser.add_argument("--nodes", type=int, default=1, help="nodes to wait for, the head included")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    args = parser.parse_args(argv)
    try:
        alive = wait_for_nodes(args.address, args.nodes, args.timeout)
    except TimeoutError as exc:
        print(f"ray_cluster: {exc}", file=sys.stderr)
        return 1
    print(f"Ray cluster at {args.address}: {alive} node(s) alive")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
