"""Collectives: every torch.distributed collective in the project goes through
``pipeline/utils/collectives.py`` (a source scan that catches a reintroduced
``dist.all_reduce(torch.zeros(1))``), which puts tensors on the device of the group's backend;
real two-process gloo semantics of its functions and of the asynchronous stop agreement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers.paths import REPO

from pipeline.distributed.runtime import free_port
from pipeline.utils import collectives

ALLOWED = REPO / "pipeline" / "utils" / "collectives.py"
SCANNED = ("pipeline", "checkpoints_tools", "data_prep", "benchmarks")
COLLECTIVES = {
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "isend",
    "irecv",
    "batch_isend_irecv",
    "monitored_barrier",
    "all_reduce_coalesced",
    "all_gather_coalesced",
}


def collective_calls(source: str) -> list[str]:
    """``line: call`` for each torch.distributed collective called in ``source``, however imported
    (``import torch.distributed as dist``, ``torch.distributed.x``, ``from torch.distributed import x``,
    ``from torch import distributed``, deepspeed.comm)."""
    tree = ast.parse(source)
    modules, names = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("torch.distributed", "deepspeed.comm"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.module in ("torch.distributed", "deepspeed.comm") and alias.name in COLLECTIVES:
                    names[alias.asname or alias.name] = alias.name
                if (node.module, alias.name) in (("torch", "distributed"), ("deepspeed", "comm")):
                    modules.add(alias.asname or alias.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in names:
            found.append(f"{node.lineno}: {func.id}")
        elif isinstance(func, ast.Attribute) and func.attr in COLLECTIVES:
            base = ast.unparse(func.value)
            if base in modules or base in ("torch.distributed", "deepspeed.comm"):
                found.append(f"{node.lineno}: {base}.{func.attr}")
    return found


def test_the_scan_catches_collectives_however_imported():
    assert collective_calls("import torch\nimport torch.distributed as dist\ndist.all_reduce(torch.zeros(1))\n")
    assert collective_calls("import torch\ntorch.distributed.barrier()\n")
    assert collective_calls("from torch.distributed import all_reduce as ar\nar(x)\n")
    assert collective_calls("from torch import distributed\ndistributed.broadcast(x, 0)\n")
    assert collective_calls("import deepspeed.comm as dc\ndc.all_gather(a, b)\n")
    assert not collective_calls("import torch.distributed as dist\ndist.get_rank()\nengine.all_reduce(x)\n")


def test_no_collective_outside_the_collectives_module():
    offenders = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if path == ALLOWED:
                continue
            offenders += [f"{path.relative_to(REPO)}:{hit}" for hit in collective_calls(path.read_text())]
    assert not offenders, "call these through pipeline.utils.collectives: " + ", ".join(offenders)


def test_each_backend_gets_tensors_on_its_device():
    assert collectives.device_for_backend("nccl", 3) == torch.device("cuda", 3)
    assert collectives.device_for_backend("gloo") == torch.device("cpu")
    assert collectives.device_for_backend("cpu:gloo,cuda:nccl") is None  # takes both


def _worker(rank: int, port: int, out: Path) -> None:
    from pipeline.distributed import local_group

    with local_group(rank, 2, tp=1, port=port):
        results = {}
        results["sum"] = collectives.all_reduce(torch.tensor([rank + 1.0]), "sum").item()
        results["max"] = collectives.all_reduce(torch.tensor([float(rank)]), "max").item()
        results["cat"] = collectives.all_gather_cat(torch.full((1, 2), rank), 0).tolist()
        results["objects"] = collectives.all_gather_object({"rank": rank})
        agreement = collectives.Agreement()
        seen = []
        for step in range(6):
            seen.append(agreement.post(rank == 1 and step == 2))  # only rank 1 asks, at step 2
        agreement.result()
        results["agreed"] = seen
        collectives.barrier()
        torch.save(results, out / f"rank{rank}.pt")


@pytest.mark.multiprocess
def test_two_process_semantics(tmp_path):
    mp.spawn(_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["sum"] == 3.0 and got["max"] == 1.0
        assert got["cat"] == [[0, 0], [1, 1]]
        assert got["objects"] == [{"rank": 0}, {"rank": 1}]
        # the post at step 2 is agreed at step 3, on both ranks, and only there
        assert got["agreed"] == [False, False, False, True, False, False]
