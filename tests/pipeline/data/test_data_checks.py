"""Prepared data checked against its manifest before training or evaluation reads it: truncated,
missing and flipped shards, a foreign tokenizer, and a dataset whose every document was rejected.
Each is named, with the repair; nothing is trained on."""

from __future__ import annotations

import shutil

import pytest
import yaml
from helpers.process import run_cli
from helpers.training import job_config, train

from pipeline.config import load_config
from pipeline.data.loader import EmptySplit, SplitStream, shard_bytes
from pipeline.errors import UserError


@pytest.fixture(scope="module")
def data(prepared_data):
    return prepared_data


def _copy(data, tmp_path, name):
    copy = tmp_path / name
    shutil.copytree(data, copy)
    return copy


def _stream(tmp_path, data, **train):
    cfg = load_config(job_config(tmp_path, data, "check", train={"tokens": 2048, **train})).config
    return SplitStream(cfg, "train", 16, seed=1)


def test_intact_data_passes_and_each_kind_of_damage_is_named_with_the_repair(data, tmp_path):
    assert len(_stream(tmp_path, data).rows(0, 4)) == 4
    truncated = _copy(data, tmp_path, "truncated")
    shard = next((truncated / "train").rglob("*.bin"))
    shard.write_bytes(shard.read_bytes()[:-7])
    missing = _copy(data, tmp_path, "missing")
    index = next((missing / "train").rglob("*.idx"))
    index.unlink()
    foreign = _copy(data, tmp_path, "foreign")
    (foreign / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    for folder, named in (
        (truncated, f"{shard}: "),
        (missing, f"{index}: missing"),
        (foreign, f"{foreign / 'tokenizer.model'}: not the tokenizer this data was tokenized with"),
    ):
        with pytest.raises(UserError) as err:
            _stream(tmp_path, folder)
        message = str(err.value)
        repair = "restore its files (every portable" if folder == foreign else "Rerun 'parscale prep'"
        assert named in message and repair in message and str(folder) in message
    assert "bytes" in str(pytest.raises(UserError, _stream, tmp_path, truncated).value)


def test_a_flipped_byte_of_the_same_size_is_caught_by_the_sha256_check_the_default_makes_for_small_data(
    data, tmp_path, monkeypatch
):
    flipped = _copy(data, tmp_path, "flipped")
    shard = next((flipped / "train").rglob("*.bin"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 1
    shard.write_bytes(bytes(raw))
    _stream(tmp_path, flipped, verify_data="size")  # sizes only: passes
    for verify in ("sha256", "auto"):  # auto: the data is under VERIFY_SHA256_UP_TO
        with pytest.raises(UserError, match=f"{shard}: sha256 differs"):
            _stream(tmp_path, flipped, verify_data=verify)
    monkeypatch.setattr("pipeline.data.loader.VERIFY_SHA256_UP_TO", shard_bytes(flipped) - 1)
    _stream(tmp_path, flipped)  # auto above the limit: sizes only


def test_training_on_a_dataset_whose_every_document_was_rejected_names_it_and_the_reject_counts(data, tmp_path):
    cfg = {
        "data": {
            "sources": [{"type": "stdlib", "glob": "json/*.py"}],
            "output_dir": str(tmp_path / "empty"),
            "min_chars": 10**9,
        },
        "tokenizer": {"model_path": str(data / "tokenizer.model")},
        "packing": {"seq_len": 32},
    }
    prep = tmp_path / "prep.yaml"
    prep.write_text(yaml.safe_dump(cfg))
    refused = run_cli("prep", str(prep))  # prep says so, and writes the manifest with the reject counts
    assert refused.returncode == 2 and "every document was rejected" in refused.stderr
    with pytest.raises(EmptySplit):
        _stream(tmp_path, tmp_path / "empty")
    proc = train(job_config(tmp_path, tmp_path / "empty", "on-empty"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"no train rows in {tmp_path / 'empty'} (" in proc.stderr and "rejected by reason: too_short" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_out_of_vocabulary_id_at_the_same_size_is_named_not_an_index_error(data, tmp_path):
    import numpy as np

    from data_prep.manifest import read_manifest

    damaged = _copy(data, tmp_path, "oov")
    manifest = read_manifest(damaged)
    shard = next((damaged / "train").rglob("*.bin"))
    tokens = np.fromfile(shard, dtype=manifest["token_dtype"])
    tokens[:64] = manifest["tokenizer"]["vocab_size"] + 5  # the first rows, same size: only a hash would tell
    tokens.tofile(shard)
    from pipeline.data.packed import open_sources

    with pytest.raises(UserError, match=rf"{shard.with_suffix('')}.bin: row 0 holds token id \d+, past the tokenizer"):
        for rows, _ in open_sources(damaged, "train"):  # what every training and evaluation read goes through
            for i in range(len(rows)):
                rows.row(i)
