"""ParScale mechanics on CPU: P=1 is the dense model, aggregation weights are a smoothed
distribution, streams differ, gradients reach prefixes and aggregator, packed documents are
isolated, cached decoding equals full recomputation."""

from __future__ import annotations

import pytest
import torch

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM
from pipeline.model.aggregator import stream_weights
from pipeline.model.generation import Sampling, filter_logits, generate
from pipeline.model.masks import positions_from_segments, segment_ids_from_lengths

VOCAB = 128
CFG = ModelConfig(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=128,
    num_attention_heads=4,
    num_kv_heads=2,
    vocab_size=VOCAB,
    pad_vocab_to_multiple_of=64,
    tie_embeddings=False,
)


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    with single_process():
        yield


def build(streams: int = 1, seed: int = 0, **ps) -> ParScaleLM:
    torch.manual_seed(seed)
    return ParScaleLM(CFG, ParScaleConfig(streams=streams, prefix_len=ps.pop("prefix_len", 6), **ps), VOCAB)


def ids(b=2, t=24, seed=1):
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def test_p1_is_exactly_the_dense_model():
    dense = build(1)
    p1 = ParScaleLM(CFG, ParScaleConfig(streams=1, prefix_len=48, eps=0.3), VOCAB)
    p1.load_state_dict(dense.state_dict())
    assert {n for n, _ in p1.named_parameters()} == {n for n, _ in dense.named_parameters()}
    x = ids()
    torch.testing.assert_close(p1(x).logits, dense(x).logits, atol=0, rtol=0)


@pytest.mark.parametrize("init", ["normal", "mlp"])
def test_stream_weights_are_smoothed_distributions_and_streams_differ(init):
    p, eps = 4, 0.1
    model = build(p, eps=eps, prefix_init=init, prefix_mlp_hidden=32)
    with torch.no_grad():  # push the aggregator away from uniform so the bounds are exercised
        model.model.aggregate_layer[2].weight.normal_(std=2.0)
    out = model(ids())
    w = out.stream_weights
    assert w.shape == (2, 24, p) and w.dtype == torch.float32
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 24))
    assert w.min() >= eps / p - 1e-7 and w.max() <= 1 - eps + eps / p + 1e-7
    assert w.max() - w.min() > 0.1
    # the streams' final hidden states differ (they only differ through their prefixes)
    hidden = {}
    model.model.norm.register_forward_hook(lambda m, i, o: hidden.setdefault("h", o))
    per_stream = model(ids(), return_stream_states=True).stream_states
    assert per_stream.shape == (p, 2, 24, CFG.hidden_size) and out.stream_states is None
    torch.testing.assert_close(per_stream, hidden["h"].view(p, 2, 24, -1), rtol=0, atol=0)
    for a in range(p):
        for b in range(a + 1, p):
            assert (per_stream[a] - per_stream[b]).abs().max() > 1e-4


def test_aggregation_is_feature_major_and_matches_the_formula():
    p, eps, h = 3, 0.2, 8
    layers = torch.nn.Sequential(torch.nn.Linear(p * h, h), torch.nn.SiLU(), torch.nn.Linear(h, p))
    hidden = torch.randn(p * 2, 5, h)
    # reference written out: concat features as h-major, p-minor ("b s (h p)")
    feats = torch.stack([hidden[i * 2 : (i + 1) * 2] for i in range(p)], dim=-1).reshape(2, 5, h * p)
    ref = torch.softmax(layers(feats), -1) * (1 - eps) + eps / p
    torch.testing.assert_close(stream_weights(layers, hidden, p, eps), ref)


@pytest.mark.parametrize("init", ["normal", "mlp"])
def test_gradients_reach_prefixes_and_aggregator(init):
    model = build(4, prefix_init=init, prefix_mlp_hidden=32)
    x = ids()
    model(x[:, :-1], labels=x[:, 1:]).loss.backward()
    names = [n for n, _ in model.named_parameters() if "prefix" in n or "aggregate" in n]
    assert len(names) >= 4
    for name, param in model.named_parameters():
        if name in names:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_packed_documents_do_not_see_each_other():
    model = build(4)
    a, b = ids(1, 10, seed=3), ids(1, 14, seed=4)
    packed = torch.cat([a, b], dim=1)
    segments = segment_ids_from_lengths([[10, 14]], 24)
    assert positions_from_segments(segments).tolist() == [list(range(10)) + list(range(14))]
    joint = model(packed, segment_ids=segments).logits
    torch.testing.assert_close(joint[:, :10], model(a).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(joint[:, 10:], model(b).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("streams", [1, 4])
def test_cached_decoding_equals_full_recomputation(streams):
    model = build(streams).eval()
    prompts = [ids(1, 5, seed=5)[0].tolist(), ids(1, 9, seed=6)[0].tolist(), ids(1, 1, seed=7)[0].tolist()]
    new = generate(model, prompts, Sampling(max_new_tokens=8))
    with torch.no_grad():
        for prompt, tokens in zip(prompts, new, strict=True):
            seq = list(prompt)
            for token in tokens:  # greedy, one full forward per step, no cache, no padding
                logits = model.full_logits(model(torch.tensor([seq])).logits)[0, -1]
                assert int(logits.argmax()) == token
                seq.append(token)
    assert all(len(t) == 8 for t in new)


def test_generation_stops_at_eos_and_samples_reproducibly():
    model = build(2).eval()
    prompt = [ids(1, 4, seed=8)[0].tolist()]
    greedy = generate(model, prompt, Sampling(max_new_tokens=6))[0]
    stop = generate(model, prompt, Sampling(max_new_tokens=6, eos_id=greedy[2]))[0]
    assert stop == greedy[: greedy.index(greedy[2]) + 1]
    s = Sampling(max_new_tokens=6, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    assert generate(model, prompt, s) == generate(model, prompt, s)


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False, False]]
    probs = torch.softmax(logits, -1)[0]
    keep = torch.isfinite(filter_logits(logits, 0, float(probs[0] + probs[1] * 0.5)))
    assert keep.tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize("streams", [1, 4, "one-prefix"])
def test_cached_logits_equal_full_logits_with_left_padding(streams):
    from pipeline.model.cache import KVCache

    model = (build(1, single_prefix=True) if streams == "one-prefix" else build(streams)).eval()
    seq = ids(1, 12, seed=9)
    with torch.no_grad():
        full = model(seq).logits[0]
        pad = 3  # the same sequence, left-padded, prefilled with 7 tokens then fed one by one
        padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), seq], dim=1)
        valid = torch.tensor([[False] * pad + [True] * 12])
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cache = KVCache(model, 1, 15, torch.float32, "cpu")
        got = [
            model(
                padded[:, : pad + 7], position_ids=positions[:, : pad + 7], cache=cache, key_valid=valid[:, : pad + 7]
            ).logits[0, pad:]
        ]
        for t in range(pad + 7, pad + 12):
            got.append(
                model(
                    padded[:, t : t + 1], position_ids=positions[:, t : t + 1], cache=cache, key_valid=valid[:, : t + 1]
                ).logits[0]
            )
    torch.testing.assert_close(torch.cat(got), full, atol=1e-5, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    x = ids()
    grads = []
    for recompute in (False, True):
        model = build(4)
        model.activation_checkpointing = recompute
        model.train()
        model(x[:, :-1], labels=x[:, 1:]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_runs_and_tracks_fp32():
    x = ids()
    fp32 = build(2)
    bf16 = build(2).to(torch.bfloat16)
    loss32 = fp32(x[:, :-1], labels=x[:, 1:]).loss
    out = bf16(x[:, :-1], labels=x[:, 1:])
    out.loss.backward()
    assert bf16(x).logits.dtype == torch.bfloat16 and out.stream_weights.dtype == torch.float32
    assert abs(out.loss.item() - loss32.item()) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in bf16.parameters() if p.grad is not None)


def test_vocabulary_padding_gets_no_probability():
    cfg = CFG.model_copy(update={"pad_vocab_to_multiple_of": 100})  # 128 -> 200 rows
    model = ParScaleLM(cfg, ParScaleConfig(), VOCAB)
    assert model.padded_vocab_size == 200
    x = ids()
    logits = model(x).logits
    assert torch.isinf(logits[..., VOCAB:]).all() and torch.isfinite(logits[..., :VOCAB]).all()
    loss = model(x[:, :-1], labels=x[:, 1:]).loss
    with torch.no_grad():  # changing the padding rows changes nothing
        model.lm_head.weight[VOCAB:] = 100.0
    torch.testing.assert_close(model(x[:, :-1], labels=x[:, 1:]).loss, loss)


def test_single_prefix_control_is_the_dense_model_plus_one_learned_prefix():
    from pipeline.model.counting import parameter_counts

    with pytest.raises(ValueError, match="needs streams 1"):
        ParScaleConfig(streams=2, single_prefix=True)
    ParScaleConfig(single_prefix=True, trainable="parscale_only")  # a prefix to train: allowed
    dense, control = build(1), build(1, single_prefix=True)
    extra = {n: p for n, p in control.named_parameters() if n not in dict(dense.named_parameters())}
    assert sorted(extra) == sorted(f"model.layers.{i}.self_attn.prefix.prefix_{kv}" for i in range(2) for kv in "kv")
    assert all(p.shape[0] == 1 for p in extra.values()) and control.model.aggregate_layer is None
    counts = parameter_counts(CFG, control.parscale, control.padded_vocab_size)
    assert counts.parscale == sum(p.numel() for p in extra.values())
    with torch.no_grad():  # the backbone equal, the prefix changes the output
        control.load_state_dict(dense.state_dict() | {n: p.detach() for n, p in extra.items()})
        x = ids()
        assert not torch.allclose(control(x).logits, dense(x).logits)
