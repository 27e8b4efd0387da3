"""The distributed bootstrap where CUDA is visible, on a CPU machine (``torch.cuda.is_available``
and ``device_count`` patched): a tool's world stays on gloo and the host, a launched node with more
ranks than GPUs is refused naming ``parallel.data_parallel_size``, ``parscale run`` counts the
visible GPUs in whole TP groups, CUDA_DEVICE_MAX_CONNECTIONS is set only where TP > 1 (and
megatron's notice about it is still filtered), and Triton's cache is node-local."""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
from helpers.paths import CONFIGS

from pipeline.config import ConfigError, load_config
from pipeline.config.training import ParallelConfig
from pipeline.distributed import backend_for, init_distributed, preferred_device, runtime, single_process
from pipeline.distributed.launcher import processes_per_job
from pipeline.errors import UserError
from pipeline.utils.known_warnings import quiet_known_warnings

DEMO = CONFIGS / "demo.yaml"  # TP = 1, data_parallel_size = 2, backend auto


def _refuse_cuda_calls(*_args, **_kwargs):
    raise AssertionError("a CUDA call in a world that should stay on the host")


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: CUDA reported available with ``n`` devices; any device switch or CUDA seeding fails."""

    def _patch(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", _refuse_cuda_calls)
        monkeypatch.setattr(torch.cuda, "manual_seed", _refuse_cuda_calls)

    return _patch


def test_a_tool_world_stays_on_gloo_and_the_host_where_cuda_is_visible(gpus):
    gpus(2)
    with single_process() as ctx:
        assert (ctx.backend, ctx.device) == ("gloo", "cpu")
        assert dist.get_backend() == "gloo"
    assert not dist.is_initialized()


def test_the_backend_follows_the_device_asked_for(gpus, monkeypatch):
    assert (backend_for("cpu"), backend_for("cuda"), backend_for("cuda:1")) == ("gloo", "nccl", "nccl")
    assert preferred_device() == "cpu"  # this machine has no GPU
    with pytest.raises(UserError, match="'cuda' asked for, but no GPU is visible"):
        with single_process(device="cuda"):
            pass
    gpus(1)
    assert preferred_device() == "cuda"


def _launched_rank(monkeypatch, rank: int, world_size: int) -> None:
    """This process as rank ``rank`` of a torchrun world (its thread count restored afterwards)."""
    for key, value in runtime.launcher_env(rank, world_size, 29555).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # init sets torch's threads from it


@pytest.mark.parametrize("rank", [0, 1])
def test_more_local_ranks_than_gpus_is_refused_naming_data_parallel_size(gpus, monkeypatch, rank):
    gpus(1)
    _launched_rank(monkeypatch, rank, 2)  # the demo's DP = 2 on a one-GPU machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError) as caught:  # before any group or set_device (patched to fail)
        init_distributed(load_config(DEMO).config)
    message = str(caught.value)
    assert isinstance(caught.value, UserError)  # the CLI's exit 2
    assert "parallel.data_parallel_size: 2 processes on this node but 1 visible GPU(s)" in message
    assert "CUDA_VISIBLE_DEVICES='0'" in message and "data_parallel_size=1" in message
    assert not dist.is_initialized()


def test_nccl_without_a_gpu_names_the_backend(monkeypatch):
    _launched_rank(monkeypatch, 0, 1)
    with pytest.raises(ConfigError, match="parallel.backend: nccl needs CUDA"):
        init_distributed(load_config(DEMO, ["parallel.backend=nccl", "parallel.data_parallel_size=1"]).config)


def test_a_job_without_data_parallel_size_takes_the_visible_gpus_in_whole_tp_groups(gpus):
    def nproc(tp, dp=None, backend="auto"):
        return processes_per_job(ParallelConfig(tensor_parallel_size=tp, data_parallel_size=dp, backend=backend))

    assert (nproc(1), nproc(2), nproc(2, dp=2)) == (1, 2, 4)  # the CPU: one TP group, as before
    gpus(8)
    assert (nproc(1), nproc(2), nproc(2, dp=1), nproc(2, backend="gloo")) == (8, 8, 2, 2)
    gpus(3)
    assert (nproc(2), nproc(4)) == (2, 4)  # 3 GPUs: one TP=2 group; TP=4 cannot fit (init says so)


def test_cuda_device_max_connections_only_where_tp_is_above_one(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    runtime.set_connection_default(1)
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in os.environ
    with single_process():  # a TP = 1 world leaves it alone
        assert "CUDA_DEVICE_MAX_CONNECTIONS" not in os.environ
    runtime.set_connection_default(2)
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "8")
    runtime.set_connection_default(2)
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "8"  # the user's own setting is kept


def _megatron_linear_warnings(quiet: bool) -> list[str]:
    """The warnings megatron-core's TP linear gives for an async input-gradient all-reduce (with our
    known-warnings filter installed when ``quiet``)."""
    from megatron.core.tensor_parallel import layers

    layers.linear_with_grad_accumulation_and_async_allreduce.warned = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if quiet:
            quiet_known_warnings()
        layers.linear_with_grad_accumulation_and_async_allreduce(
            torch.ones(2, 4), torch.ones(3, 4), None, False, allreduce_dgrad=True, sequence_parallel=False
        )
    return [str(w.message) for w in seen]


def test_megatrons_notice_without_the_connection_setting_is_still_filtered(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    with single_process():
        loud, quiet = _megatron_linear_warnings(False), _megatron_linear_warnings(True)
    assert any("CUDA_DEVICE_MAX_CONNECTIONS" in w for w in loud), loud  # megatron still says it this way
    assert not any("CUDA_DEVICE_MAX_CONNECTIONS" in w for w in quiet), quiet  # and our filter matches it


def test_triton_cache_is_node_local_per_user_and_a_set_one_is_kept(monkeypatch):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/node-tmp")  # the node's $TMPDIR (nothing is created)
    runtime.set_cache_defaults()
    triton = os.environ["TRITON_CACHE_DIR"]
    assert triton == f"/node-tmp/parscale-{runtime.user_name()}/triton"
    assert not triton.startswith(str(runtime.cache_root()))  # not the checkout (shared under SLURM)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/scratch/mine")
    runtime.set_cache_defaults()
    assert os.environ["TRITON_CACHE_DIR"] == "/scratch/mine"
