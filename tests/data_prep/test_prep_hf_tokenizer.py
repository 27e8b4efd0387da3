"""``parscale prep`` with a Hugging Face tokenizer (a byte-level BPE folder, Qwen2 style): the ids
are the ``tokenizers`` library's, each document ends with the tokenizer's end-of-document token, the
prepared folder carries the tokenizer files and the manifest records them; a vocabulary past 65,535
ids is stored as int32; a missing end-of-document token is named with the key that sets it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.corpus import text_doc, write_jsonl
from helpers.hf_models import EOD, byte_level_bpe
from tokenizers import Tokenizer

from data_prep.prepare import PrepError, prepare
from data_prep.progress import Reporter
from data_prep.ray_runtime import ray_session
from data_prep.shards import ShardReader
from pipeline.config import load_config

QUIET = Reporter(enabled=False)
DOCS = [text_doc(i) for i in range(120)] + ["tab\there, emoji \U0001f600, and the EOD text <|endoftext|> inside"]


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    with ray_session(None, 2):
        yield


def _prep(tmp_path: Path, tokenizer: Path, name: str, **tok) -> tuple[dict, Path]:
    write_jsonl(tmp_path / "c.jsonl", DOCS)
    cfg = {
        "data": {"sources": [{"type": "jsonl", "path": str(tmp_path / "c.jsonl")}], "output_dir": str(tmp_path / name)},
        "tokenizer": {"model_path": str(tokenizer), **tok},
        "packing": {"seq_len": 31, "strategy": "concat"},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg | {"data": cfg["data"] | {"val_fraction": 0.0}}))
    return prepare(load_config(path), QUIET), tmp_path / name


def _all_tokens(out: Path, manifest: dict) -> np.ndarray:
    rows = []
    for shard in manifest["sources"][0]["splits"]["train"]["shards"]:
        reader = ShardReader(out / shard["prefix"])
        rows += [reader.row(i)[0] for i in range(len(reader))]
    return np.concatenate(rows)


def test_a_byte_level_bpe_folder_tokenizes_as_the_tokenizers_library_does(tmp_path):
    folder = byte_level_bpe(DOCS, tmp_path / "hf", vocab_size=500)
    manifest, out = _prep(tmp_path, folder, "out")
    info = manifest["tokenizer"]
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eod = tok.token_to_id(EOD)
    assert info["kind"] == "hf" and info["path"] == "tokenizer.json" and info["eos_id"] == eod
    assert set(info["files"]) == {"tokenizer.json", "tokenizer_config.json"}
    for name, sha in info["files"].items():
        assert (out / name).read_bytes() == (folder / name).read_bytes() and len(sha) == 64
    assert manifest["token_dtype"] == "uint16"
    tok.encode_special_tokens = True  # EOD text inside a document is text, never a document break
    expected = np.concatenate([tok.encode(d, add_special_tokens=False).ids + [eod] for d in DOCS])
    assert np.array_equal(_all_tokens(out, manifest)[: len(expected)], expected)
    assert int((_all_tokens(out, manifest) == eod).sum()) == len(DOCS)


def test_a_vocabulary_past_65535_ids_is_stored_as_int32(tmp_path):
    folder = byte_level_bpe(DOCS, tmp_path / "hf", vocab_size=400)
    data = json.loads((folder / "tokenizer.json").read_text())
    big = 70_000  # the end-of-document token moved past uint16, as in a 151K Qwen2 vocabulary
    old = data["model"]["vocab"].pop(EOD)
    data["model"]["vocab"][EOD] = big
    for added in data["added_tokens"]:
        if added["content"] == EOD:
            added["id"] = big
    assert old != big
    (folder / "tokenizer.json").write_text(json.dumps(data))
    manifest, out = _prep(tmp_path, folder, "big")
    assert manifest["token_dtype"] == "int32" and manifest["tokenizer"]["vocab_size"] == big + 1
    assert int((_all_tokens(out, manifest) == big).sum()) == len(DOCS)


def test_a_tokenizer_without_an_end_of_document_token_names_the_key(tmp_path):
    folder = byte_level_bpe(DOCS, tmp_path / "hf", vocab_size=400)
    (folder / "tokenizer_config.json").unlink()
    data = json.loads((folder / "tokenizer.json").read_text())
    data["added_tokens"] = []
    data["model"]["vocab"]["<|nothing|>"] = data["model"]["vocab"].pop(EOD)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(PrepError, match="no end-of-document token .* set tokenizer.eod_token"):
        _prep(tmp_path, folder, "noeod")
    manifest, _ = _prep(tmp_path, folder, "named", eod_token="<|nothing|>")
    assert manifest["tokenizer"]["eos_id"] == data["model"]["vocab"]["<|nothing|>"]


def test_every_tokenizer_file_of_the_prepared_folder_is_checked(tmp_path):
    from data_prep.verify import dataset_problems

    folder = byte_level_bpe(DOCS, tmp_path / "hf", vocab_size=400)
    _, out = _prep(tmp_path, folder, "out")
    assert dataset_problems(out) == []
    config = out / "tokenizer_config.json"  # another end-of-document token would change what the data means
    config.write_text(config.read_text().replace('"eos_token"', '"bos_token"'))
    assert dataset_problems(out) == [
        f"{config}: not the tokenizer this data was tokenized with (sha256 differs from {out / 'manifest.json'})"
    ]
