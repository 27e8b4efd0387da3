"""The converters' logits check where CUDA is visible (``torch.cuda.is_available`` patched True on
this CPU machine): at TP = 1 in this process and at TP = 2 on two ranks it runs on gloo and the
host, as ``consolidate`` / ``reshard --verify`` need, instead of NCCL groups holding CPU tensors
and a GPU per TP rank."""

from __future__ import annotations

import pytest
import torch
from helpers.checkpoints import tiny_model
from helpers.multirank import run_ranks
from helpers.workers.cuda_visible import logits_with_cuda_visible

from checkpoints_tools import logits_check
from pipeline.config.model import ParScaleConfig
from pipeline.distributed import single_process
from pipeline.distributed.runtime import free_port

VOCAB = 60
PARSCALE = ParScaleConfig(streams=2, prefix_len=4)


def _no_cuda_calls(*_args, **_kwargs):
    raise AssertionError("the logits check called into CUDA")


@pytest.fixture(scope="module")
def weights() -> tuple[dict, object]:
    with single_process():
        model = tiny_model(VOCAB, PARSCALE, tie=False)
        return {k: v.detach().clone() for k, v in model.named_parameters()}, model.config


def _source(weights, tp: int) -> logits_check.FullWeights:
    state, config = weights
    return logits_check.FullWeights(state, config, PARSCALE, VOCAB, tp)


def test_the_check_at_tp1_runs_on_the_host_where_cuda_is_visible(weights, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", _no_cuda_calls)
    monkeypatch.setattr(torch.cuda, "manual_seed", _no_cuda_calls)
    message = logits_check.check(_source(weights, 1), _source(weights, 1), "same weights")
    assert "TP=1 vs TP=1: max |diff| 0.00e+00" in message


@pytest.mark.multiprocess
def test_the_check_at_tp2_runs_on_gloo_ranks_where_cuda_is_visible(weights):
    ids = logits_check.fixed_input(VOCAB)
    expected = logits_check.logits(_source(weights, 1), ids)
    first, _ = run_ranks(logits_with_cuda_visible, 2, _source(weights, 2), free_port(), ids)
    got = torch.tensor(first, dtype=expected.dtype)
    assert got.shape == expected.shape == (2, 16, VOCAB)
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
