"""``parscale convert``: inspect, verify (checksums, shapes) and dense -> ParScale conversion."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.checkpoints import tiny_model, tiny_tokenizer
from helpers.paths import REPO
from helpers.process import cli
from safetensors.torch import load_file

from pipeline.checkpoint.portable import save_portable
from pipeline.config import load_config
from pipeline.config.model import STAGE2_PREFIX_INIT_STD, ParScaleConfig
from pipeline.config.stage2 import Stage2Config
from pipeline.distributed import single_process


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    model_file, vocab = tiny_tokenizer(root)
    with single_process():
        return save_portable(
            tiny_model(vocab, ParScaleConfig(), tie=False),
            root / "dense",
            tokenizer=model_file,
            meta={"tokens_seen": 1234},
        )


def test_inspect_reports_counts_and_config(dense):
    proc = cli("convert", "inspect", str(dense))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["streams"] == 1 and info["tokens_seen"] == 1234 and info["dtype"] == ["F32"]
    assert info["parameters"]["in_file"] == info["parameters"]["total"] and info["parameters"]["parscale_extra"] == 0


def test_verify_passes_then_catches_corruption(dense, tmp_path):
    import shutil

    assert cli("convert", "verify", str(dense)).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(dense, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    (broken / "tokenizer.model").unlink()
    proc = cli("convert", "verify", str(broken))
    assert proc.returncode == 1
    assert "model.safetensors: sha256 differs" in proc.stderr and "tokenizer.model: missing" in proc.stderr


def test_dense_to_parscale_keeps_the_backbone_and_adds_streams(dense, tmp_path):
    target = tmp_path / "p4"
    proc = cli("convert", "to-parscale", str(dense), str(target), "--streams", "4", "--prefix-len", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["new_tensors"] == 2 * 2 + 4 and "max |diff| 0.00e+00 (tolerance 0.0e+00)" in result["verified"]
    from checkpoints_tools.inspect_ckpt import inspect, verify
    from checkpoints_tools.to_parscale import convert
    from pipeline.checkpoint.portable import CheckpointError

    assert verify(target) == []
    before, after = load_file(str(dense / "model.safetensors")), load_file(str(target / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert after["model.layers.0.self_attn.prefix.prefix_k"].shape == (4, 2, 6, 8)
    info = inspect(target)
    assert info["streams"] == 4 and 0 < info["parameters"]["parscale_extra_pct"]
    assert info["tokens_seen"] == 1234  # carried over: stage 2's train.skip_tokens rule reads it
    assert info["parscale"]["prefix_init_std"] == STAGE2_PREFIX_INIT_STD  # the default without --prefix-init-std

    p6 = ParScaleConfig(streams=6, prefix_len=6)
    with pytest.raises(CheckpointError, match="already ParScale with P=4; pass --allow-more-streams"):
        convert(target, tmp_path / "p6", p6)
    assert "tolerance 0.0" in convert(target, tmp_path / "p6", p6, allow_more_streams=True)["verified"]
    p6 = load_file(str(tmp_path / "p6" / "model.safetensors"))
    key = "model.layers.1.self_attn.prefix.prefix_v"
    assert p6[key].shape[0] == 6 and torch.equal(p6[key][:4], after[key])


def _our_logits(path, ids):
    from pipeline.checkpoint.portable import load_portable

    with single_process():
        model, _ = load_portable(path)
        with torch.no_grad():
            return model.full_logits(model.eval()(ids).logits)


def _hf_logits(directory, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(str(directory)).eval()(ids).logits


def test_export_to_hf_loads_in_transformers_and_imports_back_identically(dense, tmp_path):
    proc = cli("convert", "export-hf", str(dense), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    # a QKV-bias model with a sentencepiece tokenizer goes out as llama: transformers would give a qwen2
    # folder Qwen2's byte-level tokenizer whatever its tokenizer_config says (refused by the check below)
    assert result["model_type"] == "llama" and "transformers vs ours" in result["verified"]
    refused = cli("convert", "export-hf", str(dense), str(tmp_path / "qwen2"), "--model-type", "qwen2")
    assert refused.returncode == 2 and "export with --model-type llama" in refused.stderr
    assert not (tmp_path / "qwen2").exists()
    assert (tmp_path / "hf" / "tokenizer.model").exists()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_our_logits(dense, ids), _hf_logits(tmp_path / "hf", ids), atol=1e-5, rtol=0)
    back = cli("convert", "import-hf", str(tmp_path / "hf"), str(tmp_path / "back"))
    assert back.returncode == 0 and "transformers vs ours" in json.loads(back.stdout)["verified"]
    a, b = load_file(str(dense / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _save_hf(model, directory):
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_to_ours_to_hf_keeps_transformers_logits(kind, tmp_path):
    """A model made by transformers -> import-hf -> export-hf: transformers' logits unchanged."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    if kind == "llama":
        source = LlamaForCausalLM(LlamaConfig(**shape, attention_bias=False, rope_theta=5e5))
    else:
        source = Qwen2ForCausalLM(Qwen2Config(**shape))
        with torch.no_grad():  # non-zero biases, so the check sees them
            for layer in source.model.layers:
                layer.self_attn.q_proj.bias.normal_()
    hf_dir = _save_hf(source.eval(), tmp_path / "src")
    imported = cli("convert", "import-hf", str(hf_dir), str(tmp_path / "ours"))
    assert imported.returncode == 0, imported.stderr[-2000:]
    exported = cli("convert", "export-hf", str(tmp_path / "ours"), str(tmp_path / "out"), "--model-type", kind)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == kind
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(1))
    expected = _hf_logits(hf_dir, ids)
    torch.testing.assert_close(_hf_logits(tmp_path / "out", ids), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(_our_logits(tmp_path / "ours", ids), expected, atol=1e-5, rtol=0)


def test_llama_export_of_a_qkv_bias_model_adds_a_zero_o_proj_bias(dense, tmp_path):
    proc = cli("convert", "export-hf", str(dense), str(tmp_path / "llama"), "--model-type", "llama")
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    state = load_file(str(tmp_path / "llama" / "model.safetensors"))
    assert config["attention_bias"] is True and not state["model.layers.0.self_attn.o_proj.bias"].any()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_hf_logits(tmp_path / "llama", ids), _our_logits(dense, ids), atol=1e-5, rtol=0)


def test_official_parscale_model_type_round_trip(dense, tmp_path):
    from checkpoints_tools.hf import export_hf, import_hf
    from checkpoints_tools.to_parscale import convert

    convert(dense, tmp_path / "p4", ParScaleConfig(streams=4, prefix_len=5, eps=0.1))
    result = export_hf(tmp_path / "p4", tmp_path / "hf")
    assert result["model_type"] == "qwen2_parscale" and "exact" in result["verified"]
    hf_dir = tmp_path / "hf"
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_parscale"
    assert (config["parscale_n"], config["parscale_n_tokens"], config["parscale_attn_smooth"]) == (4, 5, 0.1)
    names = load_file(str(hf_dir / "model.safetensors")).keys()
    assert "model.layers.0.self_attn.prefix_k" in names and "model.aggregate_layer.2.weight" in names
    import_hf(hf_dir, tmp_path / "back")
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_our_logits(tmp_path / "back", ids), _our_logits(tmp_path / "p4", ids), atol=0, rtol=0)


def _no_output(target):
    return not target.exists() and not list(target.parent.glob(f".{target.name}*"))


def test_bad_hf_inputs_are_refused_and_leave_nothing(dense, tmp_path):
    import shutil

    hf = tmp_path / "hf"
    assert cli("convert", "export-hf", str(dense), str(hf)).returncode == 0
    cases = {}
    cases["missing"] = (tmp_path / "nope", "config.json: unreadable")
    truncated = tmp_path / "truncated"
    shutil.copytree(hf, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (truncated, "corrupt or truncated")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(hf, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    cases["mismatched"] = (mismatched, "tensors do not match its config.json")
    biased = tmp_path / "biased"
    shutil.copytree(hf, biased)
    state = load_file(str(biased / "model.safetensors"))
    from safetensors.torch import save_file

    save_file(state | {"model.layers.0.self_attn.o_proj.bias": torch.ones(32)}, str(biased / "model.safetensors"))
    (biased / "config.json").write_text(json.dumps(config | {"model_type": "llama", "attention_bias": True}))
    cases["o_proj bias"] = (biased, "o_proj.bias is non-zero")
    mixed = tmp_path / "mixed"  # half the tensors in a pickled .bin beside the safetensors: never unpickled
    shutil.copytree(hf, mixed)
    names = sorted(state)
    save_file({k: state[k] for k in names[::2]}, str(mixed / "model.safetensors"))
    torch.save({k: state[k] for k in names[1::2]}, mixed / "pytorch_model-00002-of-00002.bin")
    cases["mixed"] = (mixed, r"also holds pickled weights \(pytorch_model-00002-of-00002.bin\), which are never read")
    from checkpoints_tools.hf import import_hf
    from pipeline.checkpoint.portable import CheckpointError

    for name, (source, message) in cases.items():
        target = tmp_path / f"out-{name.replace(' ', '_')}"
        if name == "missing":  # through the CLI once: exit 2, the message on stderr
            proc = cli("convert", "import-hf", str(source), str(target))
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]
        else:
            with pytest.raises(CheckpointError, match=message):
                import_hf(source, target)
        assert _no_output(target), name


def test_no_hugging_face_model_type_holds_the_single_prefix_control():
    from checkpoints_tools.hf import _pick_model_type
    from pipeline.checkpoint.portable import CheckpointError
    from pipeline.config.model import ModelConfig, ParScaleConfig

    model = ModelConfig(num_layers=1, hidden_size=16, ffn_hidden_size=32, num_attention_heads=2, num_kv_heads=2)
    for model_type in ("auto", "qwen2", "qwen2_parscale"):
        with pytest.raises(CheckpointError, match="single_prefix"):
            _pick_model_type(model_type, model, ParScaleConfig(single_prefix=True), "sentencepiece")


def test_a_parscale_config_without_smoothing_gets_the_official_default(tmp_path):
    from checkpoints_tools.hf import _our_configs

    config = {
        "model_type": "qwen2_parscale",
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "parscale_n": 4,
    }
    _, ps = _our_configs(config, tmp_path)
    assert (ps.streams, ps.prefix_len, ps.eps) == (4, 48, 0.01)  # the official code's defaults, not ours (0.1)
    _, ps = _our_configs(config | {"parscale_attn_smooth": 0.2, "parscale_n_tokens": 8}, tmp_path)
    assert (ps.prefix_len, ps.eps) == (8, 0.2)


def test_config_keys_that_change_the_model_and_are_not_implemented_are_refused_by_name(tmp_path):
    from checkpoints_tools.hf import _our_configs
    from pipeline.checkpoint.portable import CheckpointError

    base = {
        "model_type": "qwen2",
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "rope_scaling": None,
        "use_sliding_window": False,
        "hidden_act": "silu",
    }
    _our_configs(base, tmp_path)  # the neutral values pass
    for extra, named in (
        ({"rope_scaling": {"type": "linear", "factor": 4.0}}, "rope_scaling={'type': 'linear'"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters.rope_type='yarn'"),
    ):
        with pytest.raises(CheckpointError) as err:
            _our_configs(base | extra, tmp_path)
        assert f"{tmp_path / 'config.json'}: {named}" in str(err.value) and "not implemented" in str(err.value)


def test_a_portable_changed_since_written_is_refused_by_every_reader_never_recertified(dense, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dense, broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # same size, still a valid safetensors file
    (broken / "model.safetensors").write_bytes(bytes(data))
    named = f"{broken / 'model.safetensors'}: sha256 differs from the one recorded in {broken / 'config.json'}"
    for args in (
        ("convert", "to-parscale", str(broken), str(tmp_path / "p2"), "--streams", "2"),
        ("convert", "export-hf", str(broken), str(tmp_path / "hf")),
        ("generate", str(broken), "--max-new-tokens", "2"),
    ):
        proc = cli(*args)
        assert proc.returncode == 2 and named in proc.stderr, (args, proc.stderr[-2000:])
    assert not (tmp_path / "p2").exists() and not (tmp_path / "hf").exists()

    garbage = tmp_path / "garbage"
    shutil.copytree(dense, garbage)
    (garbage / "tokenizer.model").write_bytes(b"garbage")
    proc = cli("generate", str(garbage), "--max-new-tokens", "2")
    assert proc.returncode == 2 and f"{garbage / 'tokenizer.model'}: sha256 differs" in proc.stderr
    meta = json.loads((garbage / "config.json").read_text())
    meta["sha256"].pop("tokenizer.model")  # garbage that was never recorded: still a named error, no traceback
    (garbage / "config.json").write_text(json.dumps(meta))
    proc = cli("generate", str(garbage), "--max-new-tokens", "2")
    assert proc.returncode == 2 and "tokenizer.model: not a sentencepiece model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_parscale_export_names_the_official_classes_for_trust_remote_code(dense, tmp_path):
    """Offline, the official modeling files cannot be fetched: a stand-in configuration module in
    the folder shows transformers resolves the export's auto_map as the official one would be."""
    from transformers import AutoConfig

    from checkpoints_tools.hf import export_hf
    from checkpoints_tools.to_parscale import convert

    convert(dense, tmp_path / "p2", ParScaleConfig(streams=2, prefix_len=3))
    export_hf(tmp_path / "p2", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_qwen2_parscale.Qwen2ParScaleConfig",
        "AutoModelForCausalLM": "modeling_qwen2_parscale.Qwen2ParScaleForCausalLM",
    }
    (tmp_path / "hf" / "configuration_qwen2_parscale.py").write_text(
        "from transformers import PretrainedConfig\n\n\nclass Qwen2ParScaleConfig(PretrainedConfig):\n"
        "    model_type = 'qwen2_parscale'\n"
    )
    loaded = AutoConfig.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True)
    assert type(loaded).__name__ == "Qwen2ParScaleConfig" and loaded.parscale_n == 2


def test_to_parscale_options_out_of_range_are_named_without_a_traceback(capsys):
    from pipeline.cli import main

    assert main(["convert", "to-parscale", "src", "dst", "--streams", "2", "--prefix-init-std", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--prefix-init-std: Input should be greater than 0" in err and "Traceback" not in err


def test_one_stage2_prefix_init_std_for_to_parscale_stage2_and_the_shipped_configs():
    """STAGE2_PREFIX_INIT_STD is to-parscale's default, stage2.parscale's default (a section that
    omits it included) and what every shipped stage-2 config trains with; from scratch keeps 0.02."""
    help_text = " ".join(cli("convert", "to-parscale", "--help").stdout.split())
    assert f"(default: {STAGE2_PREFIX_INIT_STD}, as stage2.parscale.prefix_init_std)" in help_text
    assert Stage2Config(tokens=1).parscale.prefix_init_std == STAGE2_PREFIX_INIT_STD
    assert Stage2Config(tokens=1, parscale={"streams": 2}).parscale.prefix_init_std == STAGE2_PREFIX_INIT_STD
    assert Stage2Config(tokens=1, parscale={"streams": 2, "prefix_init_std": 0.5}).parscale.prefix_init_std == 0.5
    assert ParScaleConfig().prefix_init_std == 0.02  # from-scratch runs (configs/scaling_from_scratch.yaml)
    pinned = {"ablation_stage2.yaml"}  # its baseline is the init before the ablation, 0.02 on purpose
    stage2 = {}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path).config
        if cfg.stage2 is not None and path.name not in pinned:
            stage2[path.name] = cfg.stage2.parscale.prefix_init_std
        if cfg.train is not None and cfg.train.init_from and cfg.parscale.streams > 1:  # a stage 2 run by hand
            stage2[path.name] = cfg.parscale.prefix_init_std
    assert {"demo.yaml", "scaling.yaml", "stage2_parscale.yaml", "stage2_frozen.yaml"} <= set(stage2)
    assert stage2 == dict.fromkeys(stage2, STAGE2_PREFIX_INIT_STD)
    assert load_config(REPO / "configs" / "ablation_stage2.yaml").config.stage2.parscale.prefix_init_std == 0.02
