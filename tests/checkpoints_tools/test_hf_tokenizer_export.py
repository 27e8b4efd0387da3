"""An export's tokenizer loads in ``AutoTokenizer`` and gives the checkpoint's ids: a sentencepiece
model trained by prep (BPE and unigram) becomes a ``tokenizer.json`` that encodes 100 corpus snippets
exactly as sentencepiece does; the special ids are in ``config.json`` and ``generation_config.json``;
Hugging Face greedy ``generate`` on the export equals ours with the same prompt handling."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers.checkpoints import tiny_model

from checkpoints_tools.hf import export_hf
from data_prep import sentencepiece_tokenizer as sp_tok
from data_prep.tokenizer import open_tokenizer
from data_prep.units import stdlib_root
from pipeline.checkpoint.portable import save_portable
from pipeline.config.data import TokenizerConfig
from pipeline.config.model import ParScaleConfig
from pipeline.distributed import single_process


def _stdlib_texts(start: int, count: int) -> list[str]:
    files = sorted(stdlib_root().glob("**/*.py"))
    random.Random(0).shuffle(files)
    return [f.read_text(encoding="utf-8", errors="replace") for f in files[start : start + count]]


def _snippets(n: int) -> list[str]:
    """n pieces of unseen standard-library files: code, docstrings, whitespace runs, digits."""
    rnd = random.Random(1)
    out = []
    for text in _stdlib_texts(100, n):
        at = rnd.randrange(max(1, len(text) - 400))
        out.append(text[at : at + 400])
    return out


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"sp-{request.param}")
    model = sp_tok.train(
        TokenizerConfig(type=request.param, vocab_size=1500), _stdlib_texts(0, 80), 0, root / "t.model"
    )
    vocab = open_tokenizer(model).vocab_size
    with single_process():
        save_portable(tiny_model(vocab, ParScaleConfig(), tie=False), root / "dense", tokenizer=model)
    result = export_hf(root / "dense", root / "hf")
    return root, result


def test_autotokenizer_on_the_export_gives_our_ids_on_100_corpus_snippets(exported):
    from transformers import AutoTokenizer

    root, result = exported
    assert "AutoTokenizer gives the checkpoint's ids" in result["tokenizer"]
    ours = open_tokenizer(root / "dense")
    theirs = AutoTokenizer.from_pretrained(str(root / "hf"))
    snippets = _snippets(100)
    assert len(snippets) == 100
    differ = [s[:40] for s in snippets if ours.encode(s) != theirs(s)["input_ids"]]
    assert differ == []
    assert theirs.decode(theirs(snippets[0])["input_ids"]) == snippets[0]  # lossless, spaces kept
    if ours.model_type == "bpe":  # special tokens in text are text (a unigram lattice matches them: documented)
        assert theirs("</s> <s>")["input_ids"] == ours.encode("</s> <s>")
    assert theirs.eos_token_id == ours.eos_id == sp_tok.EOS_ID and theirs.bos_token is None
    assert len(theirs) == ours.vocab_size  # no token added past the embedding's rows


def test_config_and_generation_config_name_the_special_ids(exported):
    root, _ = exported
    config = json.loads((root / "hf" / "config.json").read_text())
    generation = json.loads((root / "hf" / "generation_config.json").read_text())
    for record in (config, generation):
        assert record["eos_token_id"] == record["bos_token_id"] == sp_tok.EOS_ID
        assert record["pad_token_id"] == sp_tok.PAD_ID
    assert (root / "hf" / "tokenizer.model").is_file()


def test_hf_greedy_generate_equals_ours_on_the_dense_export(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.checkpoint.portable import load_portable, load_tokenizer
    from pipeline.commands.generate_cmd import prompt_ids
    from pipeline.model.generation import Sampling, generate

    root, _ = exported
    tok = load_tokenizer(root / "dense")
    prompt = "def main(argv):\n    "
    ids = prompt_ids(tok, prompt)
    with single_process():
        model, _ = load_portable(root / "dense")
        ours = generate(model.eval(), [ids], Sampling(max_new_tokens=12, temperature=0.0, eos_id=tok.eos_id), 0)[0]
    hf = AutoModelForCausalLM.from_pretrained(str(root / "hf")).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(root / "hf"))
    hf_ids = [hf_tok.eos_token_id] + hf_tok(prompt)["input_ids"]  # the same handling: after an end of document
    assert hf_ids == ids
    with torch.no_grad():
        out = hf.generate(torch.tensor([hf_ids]), max_new_tokens=12, do_sample=False)[0, len(hf_ids) :].tolist()
    assert out[: len(ours)] == list(ours)
