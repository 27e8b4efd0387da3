"""``parscale convert``: inspect, verify (checksums, shapes) and dense -> ParScale conversion."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.checkpoint.portable import save_portable
from pipeline.config.model import ParScaleConfig
from pipeline.distributed import single_process

from checkpoint_helpers import tiny_model, tiny_tokenizer
from conftest import run_cli


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    model_file, vocab = tiny_tokenizer(root)
    with single_process():
        return save_portable(tiny_model(vocab, ParScaleConfig(), tie=False), root / "dense", tokenizer=model_file,
                             meta={"tokens_seen": 1234})


def test_inspect_reports_counts_and_config(dense):
    proc = run_cli("convert", "inspect", str(dense))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["streams"] == 1 and info["tokens_seen"] == 1234 and info["dtype"] == ["F32"]
    assert info["parameters"]["in_file"] == info["parameters"]["total"] and info["parameters"]["parscale_extra"] == 0


def test_verify_passes_then_catches_corruption(dense, tmp_path):
    import shutil

    assert run_cli("convert", "verify", str(dense)).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(dense, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    (broken / "tokenizer.model").unlink()
    proc = run_cli("convert", "verify", str(broken))
    assert proc.returncode == 1
    assert "model.safetensors: sha256 differs" in proc.stderr and "tokenizer.model: missing" in proc.stderr


def test_dense_to_parscale_keeps_the_backbone_and_adds_streams(dense, tmp_path):
    target = tmp_path / "p4"
    proc = run_cli("convert", "to-parscale", str(dense), str(target), "--streams", "4", "--prefix-len", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["new_tensors"] == 2 * 2 + 4 and "identical" in result["verified"]
    assert run_cli("convert", "verify", str(target)).returncode == 0
    before, after = load_file(str(dense / "model.safetensors")), load_file(str(target / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert after["model.layers.0.self_attn.prefix.prefix_k"].shape == (4, 2, 6, 8)
    info = json.loads(run_cli("convert", "inspect", str(target)).stdout)
    assert info["streams"] == 4 and 0 < info["parameters"]["parscale_extra_pct"]

    refused = run_cli("convert", "to-parscale", str(target), str(tmp_path / "p6"), "--streams", "6", "--prefix-len", "6")
    assert refused.returncode == 2 and "already ParScale with P=4; pass --allow-more-streams" in refused.stderr
    more = run_cli("convert", "to-parscale", str(target), str(tmp_path / "p6"), "--streams", "6", "--prefix-len", "6",
                   "--allow-more-streams")
    assert more.returncode == 0, more.stderr[-2000:]
    p6 = load_file(str(tmp_path / "p6" / "model.safetensors"))
    key = "model.layers.1.self_attn.prefix.prefix_v"
    assert p6[key].shape[0] == 6 and torch.equal(p6[key][:4], after[key])


def _our_logits(path, ids):
    from pipeline.checkpoint.portable import load_portable

    with single_process():
        model, _ = load_portable(path)
        with torch.no_grad():
            return model.full_logits(model.eval()(ids).logits)


def test_export_to_hf_qwen2_loads_in_transformers_and_imports_back_identically(dense, tmp_path):
    from transformers import Qwen2ForCausalLM

    from checkpoints_tools.hf import export_hf, import_hf

    hf_dir = export_hf(dense, tmp_path / "hf")
    assert (hf_dir / "tokenizer.model").exists()
    hf = Qwen2ForCausalLM.from_pretrained(str(hf_dir)).eval()
    ids = torch.randint(0, hf.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(_our_logits(dense, ids), expected, atol=1e-5, rtol=0)
    back = import_hf(hf_dir, tmp_path / "back")
    a, b = load_file(str(dense / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_parscale_layout_round_trip(dense, tmp_path):
    from checkpoints_tools.hf import export_hf, import_hf
    from checkpoints_tools.to_parscale import convert

    convert(dense, tmp_path / "p4", ParScaleConfig(streams=4, prefix_len=5, eps=0.1))
    hf_dir = export_hf(tmp_path / "p4", tmp_path / "hf")
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_parscale"
    assert (config["parscale_n"], config["parscale_n_tokens"], config["parscale_attn_smooth"]) == (4, 5, 0.1)
    names = load_file(str(hf_dir / "model.safetensors")).keys()
    assert "model.layers.0.self_attn.prefix_k" in names and "model.aggregate_layer.2.weight" in names
    back = import_hf(hf_dir, tmp_path / "back")
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_our_logits(back, ids), _our_logits(tmp_path / "p4", ids), atol=0, rtol=0)
