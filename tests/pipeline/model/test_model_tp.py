"""Tensor parallelism: the model at TP=2 and TP=4 (spawned ranks over gloo) gives the same logits,
loss and (gathered) gradients as at TP=1, dense and ParScale (both prefix parameterisations, prefix
lengths 1, 3 and 16); at every TP, FlexAttention's logits equal the SDPA path's."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers.multirank import run_ranks
from helpers.workers.tp_model import compute

VARIANTS = {
    "dense": {"streams": 1},
    "parscale-normal": {"streams": 4, "prefix_len": 16},
    "parscale-prefix1": {"streams": 4, "prefix_len": 1},
    "parscale-mlp": {"streams": 2, "prefix_len": 3, "prefix_init": "mlp", "prefix_mlp_hidden": 16},
}


def _run(root, tp: int) -> dict:
    """One launch of ``tp`` ranks computing every variant; {variant: saved results}."""
    out = root / f"tp{tp}"
    out.mkdir()
    configs = []
    for name, parscale in VARIANTS.items():
        cfg = {
            "model": {
                "num_layers": 2,
                "hidden_size": 64,
                "ffn_hidden_size": 96,
                "num_attention_heads": 8,
                "num_kv_heads": 4,
                "vocab_size": 128,
                "pad_vocab_to_multiple_of": 32,
                "tie_embeddings": False,
            },
            "parscale": parscale,
            "parallel": {"tensor_parallel_size": tp},
            "train": {"tokens": 1000},
        }
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        configs.append(str(path))
    run_ranks(compute, tp, str(out), configs)
    return {name: torch.load(out / f"{name}.pt", weights_only=True) for name in VARIANTS}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    return {tp: _run(root, tp) for tp in (1, 2, 4)}


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tp_equals_tp1(results, variant, tp):
    one, two = results[1][variant], results[tp][variant]
    torch.testing.assert_close(two["loss"], one["loss"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(two["logits"], one["logits"], atol=1e-5, rtol=1e-5)
    assert two["grads"].keys() == one["grads"].keys()
    for name, grad in one["grads"].items():
        assert two["grads"][name].shape == grad.shape, name
        torch.testing.assert_close(two["grads"][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_flex_attention_equals_sdpa_at_every_tp(results, variant, tp):
    got = results[tp][variant]
    torch.testing.assert_close(got["flex_logits"], got["logits"], atol=1e-5, rtol=0)
