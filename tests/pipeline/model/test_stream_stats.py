"""Stream diagnostics (pipeline/model/stream_stats.py): the mean-prefix switch equals a model whose
prefixes were all set to their mean, identical streams have zero spread and cosine 1, and the
statistics stay in their ranges."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM
from pipeline.model.masks import segment_ids_from_lengths
from pipeline.model.stream_stats import StreamStats, mean_pairwise_cosine, mean_prefix, stream_vectors

VOCAB = 96
CFG = ModelConfig(
    num_layers=2,
    hidden_size=32,
    ffn_hidden_size=64,
    num_attention_heads=4,
    num_kv_heads=2,
    vocab_size=VOCAB,
    pad_vocab_to_multiple_of=32,
)


@pytest.fixture(scope="module", autouse=True)
def world():
    with single_process():
        yield


def _model(mode: str = "normal") -> ParScaleLM:
    torch.manual_seed(0)
    extra = {"prefix_mlp_hidden": 8} if mode == "mlp" else {}
    return ParScaleLM(
        CFG, ParScaleConfig(streams=4, prefix_len=3, prefix_init=mode, prefix_init_std=0.5, **extra), VOCAB
    ).eval()


def _batch():
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    return ids, segment_ids_from_lengths([[8, 12], [20]], 20)


def _loss_and_stats(model):
    ids, seg = _batch()
    with torch.no_grad():
        out = model(ids[:, :-1], labels=ids[:, 1:], segment_ids=seg[:, :-1], return_stream_states=True)
    stats = StreamStats(4, "cpu")
    stats.add(out.stream_states, out.stream_weights, torch.ones(2, 19))
    return out.loss.item(), stats.result()


@pytest.mark.parametrize("mode", ["normal", "mlp"])
def test_mean_prefix_is_the_model_with_every_prefix_set_to_the_mean(mode):
    model = _model(mode)
    loss, stats = _loss_and_stats(model)
    with mean_prefix(model):
        collapsed, collapsed_stats = _loss_and_stats(model)
    assert collapsed != loss and stats["stream_spread"] > 0
    assert collapsed_stats["stream_spread"] == pytest.approx(0, abs=1e-6)  # identical streams
    assert _loss_and_stats(model)[0] == loss  # switched back
    if mode == "normal":
        with torch.no_grad():
            for layer in model.model.layers:
                for p in (layer.self_attn.prefix.prefix_k, layer.self_attn.prefix.prefix_v):
                    p.copy_(p.mean(0, keepdim=True).expand_as(p))
        assert _loss_and_stats(model)[0] == pytest.approx(collapsed, abs=1e-6)
        assert mean_pairwise_cosine(stream_vectors(model)) == pytest.approx(1.0, abs=1e-9)


def test_statistics_stay_in_their_ranges():
    model = _model()
    _, stats = _loss_and_stats(model)
    assert 0 < stats["weight_entropy"] <= math.log(4) + 1e-9
    assert 0.25 <= stats["max_mean_weight"] <= 1
    cos = mean_pairwise_cosine(stream_vectors(model))
    assert -0.2 < cos < 0.2  # independent random prefixes are nearly orthogonal


def test_pairwise_cosine_of_known_vectors():
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx(0.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
