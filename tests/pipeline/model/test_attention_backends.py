"""FlexAttention (a BlockMask) gives the same logits as the SDPA dense-mask path on CPU (forward:
FlexAttention has no CPU backward), dense and ParScale, packed rows with several documents and a
padded tail, prefix lengths 1 and 16, rows longer than one 128-token block. TP=2 is covered by
tests/pipeline/model/test_model_tp.py. Also: one block mask per batch, shared by layers and streams; which backend
runs where; the backend is not part of a checkpoint's identity."""

from __future__ import annotations

import warnings

import pytest
import torch

from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM, flex
from pipeline.model.masks import segment_ids_from_lengths

VOCAB = 128
CFG = ModelConfig(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=96,
    num_attention_heads=8,
    num_kv_heads=4,
    vocab_size=VOCAB,
    pad_vocab_to_multiple_of=32,
    max_seq_len=512,
)
# three rows of 200 tokens: several documents, one document, documents then a padded tail (its own segment,
# as the collate function writes it)
LENGTHS = [[37, 90, 1, 72], [200], [60, 77, 40, 23]]
T = 200


@pytest.fixture(scope="module", autouse=True)
def world():
    with single_process():
        yield


def _model(streams: int, prefix_len: int) -> ParScaleLM:
    torch.manual_seed(3)
    return ParScaleLM(CFG, ParScaleConfig(streams=streams, prefix_len=prefix_len), VOCAB).eval()


def _logits(model: ParScaleLM, backend: str, ids, segments) -> torch.Tensor:
    model.attention_backend = backend
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return model.full_logits(model(ids, segment_ids=segments).logits)


@pytest.mark.parametrize("streams,prefix_len", [(1, 1), (4, 1), (4, 16)])
def test_flex_equals_sdpa_on_packed_rows(streams, prefix_len):
    model = _model(streams, prefix_len)
    ids = torch.randint(0, VOCAB, (len(LENGTHS), T), generator=torch.Generator().manual_seed(5))
    segments = segment_ids_from_lengths(LENGTHS, T)
    sdpa = _logits(model, "sdpa", ids, segments)
    got = _logits(model, "flex", ids, segments)
    torch.testing.assert_close(got, sdpa, atol=1e-5, rtol=0)
    # a wrong mask would show: the same rows without document boundaries give other logits
    unpacked = _logits(model, "flex", ids, torch.zeros_like(segments))
    assert (unpacked - sdpa).abs().max() > 1e-3


def test_flex_equals_sdpa_without_document_attention():
    model = _model(4, 16)  # no segment ids: causal over the row, prefix visible
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(_logits(model, "flex", ids, None), _logits(model, "sdpa", ids, None), atol=1e-5, rtol=0)


def test_one_block_mask_per_batch_shared_by_layers_and_streams(monkeypatch):
    built, seen = [], []
    make = flex.document_block_mask
    monkeypatch.setattr(
        "pipeline.model.lm.document_block_mask", lambda *a, **k: built.append(make(*a, **k)) or built[-1]
    )
    monkeypatch.setattr("pipeline.model.attention.attend", lambda q, k, v, mask: seen.append(mask) or q)
    model = _model(4, 16)
    model.attention_backend = "flex"
    segments = segment_ids_from_lengths([[10, 22], [32]], 32)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 32)), segment_ids=segments)
    assert len(built) == 1 and len(seen) == CFG.num_layers and all(m is built[0] for m in seen)
    mask = built[0]
    assert mask.kv_num_blocks.shape[0] == 4 * 2  # block tables for the P*B stream-major rows
    assert mask.seq_lengths == (32, 32 + 16)
    # row p*B + b follows sequence b's documents: query 15 (document 1 of row 0) sees key 12, not key 5
    mod = mask.mask_mod
    for stream in range(4):
        row = torch.tensor(stream * 2)
        assert bool(mod(row, 0, torch.tensor(15), torch.tensor(12)))
        assert not bool(mod(row, 0, torch.tensor(15), torch.tensor(5)))
        assert bool(mod(row, 0, torch.tensor(0), torch.tensor(32 + 3)))  # a prefix slot
        assert bool(mod(row + 1, 0, torch.tensor(15), torch.tensor(5)))  # sequence 1 is one document


def test_which_backend_trains_where():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert flex.training_backend("auto", cpu) == "sdpa"
    assert flex.training_backend("auto", cuda) == "flex"
    assert flex.training_backend("sdpa", cuda) == "sdpa"
    assert flex.training_backend("flex", cuda) == "flex"
    with pytest.raises(ValueError, match="flex trains only on CUDA"):
        flex.training_backend("flex", cpu)


def test_plain_causal_and_decoding_keep_sdpa(monkeypatch):
    monkeypatch.setattr("pipeline.model.attention.attend", lambda *a: pytest.fail("FlexAttention was used"))
    dense = _model(1, 1)
    dense.attention_backend = "flex"
    with torch.no_grad():
        dense(torch.randint(0, VOCAB, (2, 16)))  # no documents, no prefix: the is_causal path
    from pipeline.model.generation import Sampling, generate

    model = _model(2, 4)
    model.attention_backend = "flex"
    assert len(generate(model, [[1, 2, 3]], Sampling(max_new_tokens=3))[0]) == 3  # cached decoding


def test_backend_is_not_part_of_the_model_identity():
    flexed = CFG.model_copy(update={"attention_backend": "flex"})
    assert "attention_backend" not in CFG.identity()
    assert flexed.identity() == CFG.identity()
    assert ModelConfig.model_validate(CFG.identity()) == CFG
