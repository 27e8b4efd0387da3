"""Stream diagnostics of a bf16 run: streams that differ by about one bf16 step give the spread the
fp32 computation gives (the states are upcast before their differences and sums)."""

from __future__ import annotations

import pytest
import torch

from pipeline.distributed import single_process
from pipeline.model.stream_stats import StreamStats


@pytest.fixture(scope="module", autouse=True)
def world():
    with single_process():
        yield


def _spread(states: torch.Tensor, weights: torch.Tensor) -> float:
    stats = StreamStats(states.shape[0], "cpu")
    stats.add(states, weights, torch.ones(states.shape[1:3]))
    return stats.result()["stream_spread"]


def test_near_identical_bf16_streams_give_the_fp32_spread():
    torch.manual_seed(0)
    p, b, t, h = 4, 2, 16, 64
    base = 1.0 + torch.rand(1, b, t, h)  # in [1, 2): one bf16 step is 2^-7
    states = (base + 2**-7 * torch.randint(0, 2, (p, b, t, h))).bfloat16()  # streams a step or none apart
    weights = torch.full((b, t, p), 1 / p)
    exact = _spread(states.double(), weights)
    assert exact > 1e-3  # the streams differ
    assert _spread(states, weights) == pytest.approx(exact, rel=1e-6)
    # what the same arithmetic gives in bf16 (before the fix): the mean and the sums rounded
    mean = states.mean(0, keepdim=True)
    rounded = ((states - mean).pow(2).sum().double() / (mean.pow(2).sum().double() * p)).sqrt().item()
    assert rounded != pytest.approx(exact, rel=0.05)
