"""Paired seeds: for a given seed, the backbone of a ParScale model (any P, either prefix
parameterisation, the one-prefix control) initialises exactly as the dense model does; ParScale's
own tensors come from a stream of their own. ``parscale_draws="shared"`` (what to-parscale uses)
keeps the earlier interleaved draws."""

from __future__ import annotations

import pytest
import torch

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM
from pipeline.model.param_groups import parscale_parameter

VOCAB = 96
CFG = ModelConfig(
    num_layers=3,
    hidden_size=32,
    ffn_hidden_size=64,
    num_attention_heads=4,
    num_kv_heads=2,
    vocab_size=VOCAB,
    pad_vocab_to_multiple_of=32,
    tie_embeddings=False,
)


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    with single_process():
        yield


def build(seed: int, draws: str = "own", **ps) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = ParScaleLM(CFG, ParScaleConfig(prefix_len=4, **ps), VOCAB, parscale_draws=draws)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def split(params: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(backbone, ParScale's own) parameters."""
    own = {n: p for n, p in params.items() if parscale_parameter(n)}
    return {n: p for n, p in params.items() if n not in own}, own


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    "parscale",
    [
        {"streams": 2},
        {"streams": 8},
        {"streams": 8, "prefix_init": "mlp", "prefix_mlp_hidden": 8},
        {"streams": 1, "single_prefix": True},
    ],
    ids=["p2", "p8", "p8-mlp-prefix", "one-prefix"],
)
def test_the_backbone_of_a_parscale_model_is_the_dense_model_of_the_same_seed(parscale):
    dense = build(7, streams=1)
    backbone, own = split(build(7, **parscale))
    assert own and same(backbone, dense)
    other_backbone, other_own = split(build(8, **parscale))
    assert not torch.equal(other_backbone["model.embed_tokens.weight"], dense["model.embed_tokens.weight"])
    assert not any(torch.equal(own[n], other_own[n]) for n in own if own[n].abs().sum() > 0)  # biases start at 0
    assert same(split(build(7, **parscale))[1], own)  # ParScale's own tensors: a function of the seed


def test_parscale_tensors_do_not_repeat_the_backbone_draws():
    """Their stream is not the backbone's: the first prefix is not the backbone's first draw rescaled."""
    torch.manual_seed(7)
    first = torch.randn(16)
    prefix = build(7, streams=2)["model.layers.0.self_attn.prefix.prefix_k"].flatten()[:16]
    assert not torch.allclose(prefix / prefix.std(), first / first.std(), atol=1e-3)


def test_a_dense_model_initialises_as_before_and_shared_draws_interleave():
    # dense: nothing drawn from ParScale's stream, so both modes build the same model
    assert same(build(5, "own", streams=1), build(5, "shared", streams=1))
    # shared (to-parscale's): the prefixes are drawn between the layers, shifting the backbone after layer 0's attention
    backbone, _ = split(build(5, "shared", streams=4))
    dense = build(5, streams=1)
    assert torch.equal(
        backbone["model.layers.0.self_attn.q_proj.weight"], dense["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not torch.equal(
        backbone["model.layers.0.mlp.gate_proj.weight"], dense["model.layers.0.mlp.gate_proj.weight"]
    )


def test_building_a_parscale_model_leaves_the_global_stream_where_the_dense_model_leaves_it():
    build(11, streams=1)
    after_dense = torch.randn(4)
    build(11, streams=8)
    assert torch.equal(torch.randn(4), after_dense)
