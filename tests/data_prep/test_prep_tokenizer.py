"""The sentencepiece tokenizer: BPE and unigram training, lossless on code, deterministic, fixed
special ids, user-defined symbols kept whole, and token dtype rules."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.corpus import text_doc

from data_prep import sentencepiece_tokenizer as sp_tok
from data_prep import tokenizer as tok
from data_prep.text_tokenizer import TokenizerError
from pipeline.config.data import TokenizerConfig
from pipeline.utils.fs import file_sha256

CODE = 'def f(x):\n\tif x:\n        return "café ☃ {}"\n    return None  # done\r\n'


@pytest.fixture(scope="module")
def sample():
    return [text_doc(i) for i in range(150)] + [CODE] * 3


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_train_is_lossless_and_deterministic(tmp_path, sample, kind):
    cfg = TokenizerConfig(type=kind, vocab_size=350, user_defined_symbols=["<|code|>"])
    a = sp_tok.train(cfg, list(sample), seed=1, out=tmp_path / "a.model")
    b = sp_tok.train(cfg, list(sample), seed=1, out=tmp_path / "b.model")
    assert a.read_bytes() == b.read_bytes()
    sp = tok.open_tokenizer(a)
    for text in (CODE, text_doc(999), "<|code|> unseen ☃ \U0001f600 text"):
        assert sp.decode(sp.encode(text)) == text
    assert sp.encode("<|code|>") == [sp.sp.piece_to_id("<|code|>")]
    assert len(sp.encode("\n\n\t")) == 3  # newline and tab are single pieces
    info = tok.describe(a)
    assert (info.pad_id, info.unk_id, info.bos_id, info.eos_id) == (
        sp_tok.PAD_ID,
        sp_tok.UNK_ID,
        sp_tok.BOS_ID,
        sp_tok.EOS_ID,
    )
    assert info.sha256 == file_sha256(a) and info.kind == "sentencepiece" and info.type == kind
    assert info.vocab_size == sp.vocab_size <= 350  # a soft limit: tiny corpora may give fewer


def test_token_dtype_rules():
    assert tok.token_dtype(65536, "auto") == np.uint16
    assert tok.token_dtype(65537, "auto") == np.int32
    assert tok.token_dtype(1000, "int32") == np.int32
    with pytest.raises(ValueError, match="packing.token_dtype: uint16 holds ids up to 65535"):
        tok.token_dtype(100_000, "uint16")


def test_not_a_model(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        tok.open_tokenizer(bad)


def test_a_smaller_vocabulary_than_asked_is_named_with_the_size_obtained(tmp_path, sample, capsys):
    path = sp_tok.train(TokenizerConfig(vocab_size=5000), list(sample), seed=1, out=tmp_path / "a.model")
    got = tok.open_tokenizer(path).vocab_size
    assert got < 5000
    err = capsys.readouterr().err
    assert f"warning: tokenizer.vocab_size is 5000, but sentencepiece made {got} pieces" in err
    sp_tok.train(TokenizerConfig(vocab_size=300), list(sample), seed=1, out=tmp_path / "b.model")
    assert "warning" not in capsys.readouterr().err  # the size asked for: nothing to say
