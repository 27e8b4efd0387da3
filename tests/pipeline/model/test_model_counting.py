"""Parameter and FLOP counting: the paper's figure for the 0.5B preset, analytic counts equal to
the parameters of built models, ParScale's small overhead."""

from __future__ import annotations

import pytest
from helpers.paths import CONFIGS

from pipeline.config import load_config
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM
from pipeline.model.counting import forward_flops_per_token, parameter_counts

PAPER_NON_EMBEDDING = {"0.5b": 535_813_376}


def test_paper_non_embedding_count_of_the_05b_preset():
    cfg = load_config(CONFIGS / "models" / "paper-0.5b.yaml").config.model
    assert parameter_counts(cfg, ParScaleConfig(), 151_936).non_embedding == PAPER_NON_EMBEDDING["0.5b"]


@pytest.mark.parametrize("size", ["0.5b", "0.7b", "1.1b", "1.6b", "2.8b", "4.4b"])
def test_presets_grow_and_parscale_adds_a_fraction_of_a_percent_per_stream(size):
    cfg = load_config(CONFIGS / "models" / f"paper-{size}.yaml").config.model
    counts = parameter_counts(cfg, ParScaleConfig(streams=8, prefix_len=48), 151_936)
    assert 0.0 < counts.parscale_fraction / 8 < 0.01


@pytest.mark.parametrize(
    "tie, streams, init",
    [(True, 1, "normal"), (False, 1, "normal"), (False, 4, "normal"), (True, 3, "mlp")],
)
def test_counts_equal_a_built_model(tie, streams, init):
    cfg = ModelConfig(
        num_layers=2,
        hidden_size=48,
        ffn_hidden_size=80,
        num_attention_heads=6,
        num_kv_heads=2,
        vocab_size=100,
        pad_vocab_to_multiple_of=16,
        tie_embeddings=tie,
    )
    ps = ParScaleConfig(streams=streams, prefix_len=4, prefix_init=init, prefix_mlp_hidden=8)
    with single_process():
        model = ParScaleLM(cfg, ps, 100)
        built = sum(p.numel() for p in model.parameters())
        counts = parameter_counts(cfg, ps, model.padded_vocab_size)
    assert counts.total == built
    assert counts.parscale == sum(p.numel() for n, p in model.named_parameters() if "prefix" in n or "aggregate" in n)


def test_flops_scale_with_streams_but_the_head_runs_once():
    cfg = load_config(CONFIGS / "models" / "paper-0.5b.yaml").config.model
    dense = forward_flops_per_token(cfg, ParScaleConfig(), 151_936, 2048)
    p4 = forward_flops_per_token(cfg, ParScaleConfig(streams=4), 151_936, 2048)
    head = 2 * cfg.hidden_size * 151_936
    assert 3.0 < (p4 - head) / (dense - head) < 4.2  # backbone x4, plus prefix attention and aggregator
    counts = parameter_counts(cfg, ParScaleConfig(), 151_936)
    assert dense == pytest.approx(2 * (counts.non_embedding + 151_936 * cfg.hidden_size), rel=0.15)
