"""Our decoder against Hugging Face ``Qwen2ForCausalLM`` built from the same small config with the
same weights (no download): logits equal in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM

VOCAB = 256


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    with single_process():
        yield


def _pair(tie: bool, qkv_bias: bool = True, rope_base: float = 10000.0):
    hf_cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": rope_base},
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # HF zero-inits biases; make them count
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    ours = ParScaleLM(
        ModelConfig(
            num_layers=3,
            hidden_size=64,
            ffn_hidden_size=160,
            num_attention_heads=4,
            num_kv_heads=2,
            vocab_size=VOCAB,
            tie_embeddings=tie,
            rope_base=rope_base,
            qkv_bias=qkv_bias,
            max_seq_len=512,
            pad_vocab_to_multiple_of=64,
        ),
        ParScaleConfig(),
        VOCAB,
    ).eval()
    state = {k: v for k, v in hf.state_dict().items() if not (tie and k == "lm_head.weight")}
    ours.load_state_dict(state, strict=True)
    return hf, ours


@pytest.mark.parametrize("tie, rope_base", [(False, 10000.0), (True, 1_000_000.0)])
def test_logits_match_transformers_qwen2(tie, rope_base):
    hf, ours = _pair(tie, rope_base=rope_base)
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours.full_logits(ours(ids).logits)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_loss_matches_transformers_qwen2():
    hf, ours = _pair(False)
    ids = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(ids, labels=ids).loss  # HF shifts inside
        got = ours(ids[:, :-1], labels=ids[:, 1:]).loss
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
