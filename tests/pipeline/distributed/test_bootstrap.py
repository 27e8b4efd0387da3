"""Distributed bootstrap: a world of one in a plain process, and two processes under torchrun as
TP=2 and as DP=2, with group sizes, ranks and a DeepSpeed ZeRO step through the mpu adapter."""

from __future__ import annotations

import json
import sys

import pytest
from helpers.paths import CONFIGS
from helpers.process import run_module

from pipeline.distributed import runtime
from pipeline.distributed.launcher import TorchrunLaunch

DEMO = str(CONFIGS / "demo.yaml")
HEALTHCHECK = "pipeline.distributed.healthcheck"


def _topology(out) -> dict:
    return json.loads((out / "topology.json").read_text())


def _torchrun(tmp_path, nproc: int, *overrides: str) -> dict:
    args = [DEMO, "--out", str(tmp_path)]
    for o in overrides:
        args += ["--set", o]
    launch = TorchrunLaunch(module=HEALTHCHECK, args=args, nproc_per_node=nproc)
    rc = launch.run()
    assert rc == 0, f"torchrun exited {rc}"
    return _topology(tmp_path)


@pytest.fixture(scope="module")
def world_of_one(tmp_path_factory):
    out = tmp_path_factory.mktemp("w1")
    proc = run_module(
        HEALTHCHECK,
        DEMO,
        "--out",
        str(out),
        "--set",
        "parallel.tensor_parallel_size=1",
        "--set",
        "parallel.data_parallel_size=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _topology(out)


def test_world_of_one_without_a_launcher(world_of_one):
    topo = world_of_one
    assert topo["ok"] and topo["world_size"] == 1 and topo["backend"] == "gloo"
    (rank,) = topo["ranks"]
    assert rank["context"]["tp_size"] == 1 and rank["context"]["dp_size"] == 1
    assert rank["tp_group"] == [0] and rank["dp_group"] == [0]
    assert rank["deepspeed_zero_stage"] == 1 and rank["deepspeed_loss"] > 0


@pytest.mark.multiprocess
def test_two_processes_tensor_parallel(tmp_path, world_of_one):
    topo = _torchrun(tmp_path, 2, "parallel.tensor_parallel_size=2", "parallel.data_parallel_size=1")
    assert topo["ok"] and (topo["world_size"], topo["tp_size"], topo["dp_size"]) == (2, 2, 1)
    for rank, record in enumerate(topo["ranks"]):
        ctx = record["context"]
        assert (ctx["rank"], ctx["tp_rank"], ctx["dp_rank"]) == (rank, rank, 0)
        assert record["tp_group"] == [0, 1] and record["dp_group"] == [rank]
        assert record["tp_allreduce"] == 2 and record["dp_allreduce"] == 1
    # The TP=2 layers hold the split of the same master weights as TP=1, and see the same batch
    # (DP rank 0): the loss of the ZeRO step must equal the single-process one.
    assert topo["ranks"][0]["deepspeed_loss"] == pytest.approx(world_of_one["ranks"][0]["deepspeed_loss"], rel=1e-6)


@pytest.mark.multiprocess
def test_two_processes_data_parallel_zero3(tmp_path):
    topo = _torchrun(
        tmp_path, 2, "parallel.tensor_parallel_size=1", "parallel.data_parallel_size=2", "parallel.zero_stage=3"
    )
    assert topo["ok"] and (topo["tp_size"], topo["dp_size"]) == (1, 2)
    for rank, record in enumerate(topo["ranks"]):
        ctx = record["context"]
        assert (ctx["tp_rank"], ctx["dp_rank"]) == (0, rank)
        assert record["tp_group"] == [rank] and record["dp_group"] == [0, 1]
        assert record["deepspeed_zero_stage"] == 3
    assert topo["ranks"][0]["deepspeed_loss"] == topo["ranks"][1]["deepspeed_loss"]  # averaged over DP


def test_world_size_mismatch_names_the_config_key(tmp_path):
    proc = run_module(
        HEALTHCHECK,
        DEMO,
        "--out",
        str(tmp_path),
        "--set",
        "parallel.tensor_parallel_size=1",
        "--set",
        "parallel.data_parallel_size=2",
        "--no-deepspeed",
    )
    assert proc.returncode == 2
    assert (
        "--set parallel.data_parallel_size=2: parallel.data_parallel_size: 2 x tensor_parallel_size 1 "
        "!= world size 1" in proc.stderr
    )
    assert not (tmp_path / "topology.json").exists()


def test_launcher_env_for_a_single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert runtime.ensure_launcher_env() is True
    import os

    assert os.environ["WORLD_SIZE"] == "1" and os.environ["RANK"] == "0" and int(os.environ["MASTER_PORT"]) > 0
    assert runtime.ensure_launcher_env() is False  # now set: left alone


def test_launcher_env_refuses_a_partial_launch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE is set but RANK"):
        runtime.ensure_launcher_env()


def test_torchrun_command_and_thread_split(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_threads_per_rank", lambda: 16)
    monkeypatch.setattr("pipeline.distributed.launcher.cpu_threads_per_rank", lambda: 16)
    local = TorchrunLaunch(module="m", args=["a"], nproc_per_node=4)
    assert "--standalone" in local.command() and local.command()[-3:] == ["-m", "m", "a"]
    assert local.env()["OMP_NUM_THREADS"] == "4"
    multi = TorchrunLaunch(module="m", args=[], nproc_per_node=8, nnodes=2, rdzv_endpoint="node0:29500")
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29500"} <= set(multi.command())
    assert "--standalone" not in multi.command()
    one = TorchrunLaunch(module="m", args=["a"], nproc_per_node=1)  # a world of one needs no launcher
    assert one.command() == [sys.executable, "-m", "m", "a"] and one.env()["OMP_NUM_THREADS"] == "16"
