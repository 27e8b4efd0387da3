"""``parscale generate`` on a portable checkpoint (a tiny random ParScale model with a real
sentencepiece tokenizer): it runs, is deterministic when greedy, and refuses bad folders."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import tiny_model, tiny_tokenizer
from helpers.process import cli

from pipeline.checkpoint.portable import CheckpointError, load_portable, save_portable
from pipeline.config.model import ParScaleConfig
from pipeline.distributed import single_process


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model_file, vocab = tiny_tokenizer(root)
    with single_process():
        model = tiny_model(vocab, ParScaleConfig(streams=2, prefix_len=4))
        path = save_portable(model, root / "model", tokenizer=model_file, meta={"tokens_seen": 0})
        reloaded, config = load_portable(path)
        saved = {k: v for k, v in model.state_dict().items() if v is not None}  # tied head: no own weight
        loaded = {k: v for k, v in reloaded.state_dict().items() if v is not None}
        assert saved.keys() == loaded.keys()
        for name, value in saved.items():  # vocabulary padding rows are not kept (they never get probability)
            rows = vocab if name == "model.embed_tokens.weight" else None
            assert torch.equal(value[:rows], loaded[name][:rows]), name
    assert config["parscale"]["streams"] == 2
    return path


def test_generate_is_deterministic_when_greedy(checkpoint):
    args = ["generate", str(checkpoint), "--prompt", "doc 1: alpha", "--prompt", "beta", "--max-new-tokens", "12"]
    first, second = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == second.stdout
    assert first.stdout.startswith("doc 1: alpha") and "beta" in first.stdout


def test_generate_samples_with_a_seed(checkpoint):
    args = [
        "generate",
        str(checkpoint),
        "--prompt",
        "gamma",
        "--temperature",
        "1.0",
        "--top-k",
        "50",
        "--top-p",
        "0.9",
        "--max-new-tokens",
        "12",
        "--only-new",
    ]
    a, b = cli(*args, "--seed", "1"), cli(*args, "--seed", "1")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_bad_checkpoint_folders_are_refused(checkpoint, tmp_path):
    proc = cli("generate", str(tmp_path), "--prompt", "x")
    assert proc.returncode == 2 and "config.json: not found" in proc.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.model"):
        (broken / name).write_bytes((checkpoint / name).read_bytes())
    (broken / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:100])
    proc = cli("generate", str(broken), "--prompt", "x")  # truncated since written: its recorded sha256 tells
    assert (
        proc.returncode == 2 and f"{broken / 'model.safetensors'}: sha256 differs from the one recorded" in proc.stderr
    )
    config = json.loads((checkpoint / "config.json").read_text())
    legacy = {k: v for k, v in config.items() if k != "sha256"}  # written before checksums: the loader tells
    (broken / "config.json").write_text(json.dumps(legacy))
    proc = cli("generate", str(broken), "--prompt", "x")
    assert proc.returncode == 2 and "model.safetensors: corrupt or truncated" in proc.stderr
    config["parscale"]["streams"] = 3
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    with single_process(), pytest.raises(CheckpointError, match="weights do not match"):
        load_portable(broken)


def test_attention_backend_reaches_the_model_and_is_checked(checkpoint, monkeypatch):
    from pipeline.model import flex

    chosen = []
    choose = flex.set_attention_backend
    monkeypatch.setattr(flex, "set_attention_backend", lambda model, *a: chosen.append(choose(model, *a)) or chosen[-1])
    args = ["generate", str(checkpoint), "--prompt", "doc 1: alpha", "--max-new-tokens", "8"]
    default, sdpa, flexed = (
        cli(*args),
        cli(*args, "--attention-backend", "sdpa"),
        cli(*args, "--attention-backend", "flex"),
    )
    assert default.returncode == sdpa.returncode == flexed.returncode == 0, flexed.stderr[-2000:]
    assert default.stdout == sdpa.stdout == flexed.stdout  # cached decoding runs SDPA under every setting
    assert chosen == ["sdpa", "sdpa", "flex"]  # auto on CPU is sdpa
    proc = cli(*args, "--attention-backend", "fused")
    assert proc.returncode == 2 and "invalid choice: 'fused'" in proc.stderr
