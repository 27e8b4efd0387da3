"""Job configs: schema validation, base inheritance, dotted overrides, the resolved copy."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from helpers.paths import CONFIGS
from pydantic import TypeAdapter

from pipeline.config import ConfigError, load_config, write_resolved
from pipeline.config.base import Count

TINY = textwrap.dedent(
    """\
    run:
      name: tiny
    model:
      num_layers: 2
      hidden_size: 64
      ffn_hidden_size: 128
      num_attention_heads: 4
      num_kv_heads: 2
    train:
      tokens: 1M
    """
)


def problems_of(exc: pytest.ExceptionInfo) -> list[str]:
    return [str(p) for p in exc.value.problems]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_validates(path):
    loaded = load_config(path)
    assert loaded.files[0] == str(path)


def test_good_file_fills_defaults(write_yaml):
    cfg = load_config(write_yaml("job.yaml", TINY)).config
    assert cfg.model.hidden_size == 64 and cfg.train.tokens == 1_000_000
    assert cfg.parallel.zero_stage == 1 and cfg.logging.wandb_mode == "offline"
    assert cfg.data.sources[0].type == "stdlib"  # the embedded default corpus
    assert cfg.model.kv_channels == 16


def test_misspelt_key_names_key_file_and_line(write_yaml):
    path = write_yaml("job.yaml", TINY.replace("  hidden_size: 64", "  hidden_sise: 64"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    found = problems_of(exc)
    assert any(p.startswith(f"{path}:5: model.hidden_sise: unknown key; did you mean 'hidden_size'?") for p in found)
    # the missing real key is reported too, at the section's line
    assert any(p.startswith(f"{path}:3: model.hidden_size: required key is missing") for p in found)
    assert str(path) in str(exc.value).splitlines()[0]


@pytest.mark.parametrize(
    "edit, key, expected",
    [
        ("parallel:\n  zero_stage: 4\n", "parallel.zero_stage", "less than or equal to 3"),
        ("parallel:\n  precision: fp16\n", "parallel.precision", "'fp32' or 'bf16'"),
        ("parallel:\n  micro_batch_size: many\n", "parallel.micro_batch_size", "valid integer"),
        ("optimizer:\n  lr: -1\n", "optimizer.lr", "greater than 0"),
        ("parscale:\n  eps: 1.5\n", "parscale.eps", "less than 1"),
        ("data:\n  sources: []\n", "data.sources", "at least 1 item"),
        ("data:\n  sources:\n    - type: jsonl\n", "data.sources[0].path", "required key is missing"),
        ("data:\n  sources:\n    - type: csv\n      path: x\n", "data.sources[0]", "'csv' found using 'type'"),
        (
            "data:\n  sources:\n    - type: code\n      path: x\n      text_field: t\n",
            "data.sources[0].text_field",
            "unknown key",
        ),
        ("schedule:\n  decay_fraction: 2\n", "schedule.decay_fraction", "less than or equal to 1"),
        ("optimizer:\n  lr: .inf\n", "optimizer.lr", "finite number"),
        ("optimizer:\n  lr: .nan\n", "optimizer.lr", "finite number"),
        ("logging:\n  metrics_file: ../x.jsonl\n", "logging.metrics_file", "climbs out of run.output_dir"),
    ],
)
def test_bad_values_are_refused_with_the_dotted_key(write_yaml, edit, key, expected):
    path = write_yaml("job.yaml", TINY + edit)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    hits = [p for p in exc.value.problems if p.key == key]
    assert hits, problems_of(exc)
    assert expected in hits[0].message
    assert hits[0].where.startswith(f"{path}:")


def test_cross_section_checks_name_the_key(write_yaml):
    path = write_yaml("job.yaml", TINY + "parallel:\n  tensor_parallel_size: 4\npacking:\n  seq_len: 8192\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    found = problems_of(exc)
    assert any("parallel.tensor_parallel_size: 4 does not divide model.num_kv_heads (2)" in p for p in found)
    assert any(p.startswith(f"{path}:14: packing.seq_len: 8192 exceeds model.max_seq_len") for p in found)


def test_section_rules(write_yaml):
    path = write_yaml("job.yaml", TINY.replace("num_kv_heads: 2", "num_kv_heads: 3"))
    with pytest.raises(ConfigError, match=r"model: num_attention_heads \(4\) must be a multiple of num_kv_heads"):
        load_config(path)
    path = write_yaml("job2.yaml", TINY + "parscale:\n  trainable: parscale_only\n")
    with pytest.raises(ConfigError, match="leaves nothing to train"):
        load_config(path)


def test_yaml_syntax_error_names_line(write_yaml):
    path = write_yaml("job.yaml", TINY + "parallel:\n  zero_stage: [1\n")
    with pytest.raises(ConfigError, match=rf"{path}:1\d: not valid YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, value",
    [("20e9", 20 * 10**9), ("1T", 10**12), ("1.5M", 1_500_000), (2e10, 2 * 10**10), ("20_000", 20_000), (7, 7)],
)
def test_counts_accept_natural_spellings(text, value):
    assert TypeAdapter(Count).validate_python(text) == value


def test_counts_refuse_fractions():
    with pytest.raises(Exception, match="whole number"):
        TypeAdapter(Count).validate_python("1.5")


# ------------------------------------------------------------------ inheritance


def test_base_inheritance_deep_merges(write_yaml):
    write_yaml(
        "presets/model.yaml",
        "model:\n  num_layers: 8\n  hidden_size: 128\n  ffn_hidden_size: 256\n"
        "  num_attention_heads: 8\n  num_kv_heads: 2\n  rope_base: 500000\n",
    )
    write_yaml(
        "parent.yaml", "base: presets/model.yaml\ntrain:\n  tokens: 5M\noptimizer:\n  lr: 1e-3\n  weight_decay: 0.05\n"
    )
    child = write_yaml("child.yaml", "base: parent.yaml\nmodel:\n  num_layers: 2\noptimizer:\n  lr: 2e-4\n")
    loaded = load_config(child)
    cfg = loaded.config
    assert cfg.model.num_layers == 2  # child wins
    assert cfg.model.hidden_size == 128 and cfg.model.rope_base == 500000  # siblings kept from the preset
    assert cfg.optimizer.lr == pytest.approx(2e-4) and cfg.optimizer.weight_decay == pytest.approx(0.05)
    assert cfg.train.tokens == 5_000_000
    assert [p.rsplit("/", 1)[-1] for p in loaded.files] == ["child.yaml", "parent.yaml", "model.yaml"]
    assert loaded.where("model.num_layers") == f"{child}:3"
    assert loaded.where("model.hidden_size").endswith("presets/model.yaml:3")


def test_list_of_bases_later_wins(write_yaml):
    write_yaml("a.yaml", TINY + "optimizer:\n  lr: 1e-3\n")
    write_yaml("b.yaml", "optimizer:\n  lr: 5e-4\n")
    cfg = load_config(write_yaml("c.yaml", "base: [a.yaml, b.yaml]\n")).config
    assert cfg.optimizer.lr == pytest.approx(5e-4)


def test_lists_are_replaced_not_merged(write_yaml):
    write_yaml("a.yaml", TINY + "data:\n  sources:\n    - type: stdlib\n    - type: code\n      path: src\n")
    cfg = load_config(
        write_yaml("b.yaml", "base: a.yaml\ndata:\n  sources:\n    - type: jsonl\n      path: x.jsonl\n")
    ).config
    assert [s.type for s in cfg.data.sources] == ["jsonl"]


def test_error_in_base_points_at_the_base_file(write_yaml):
    base = write_yaml("base.yaml", TINY + "parallel:\n  zero_stage: 9\n")
    with pytest.raises(ConfigError) as exc:
        load_config(write_yaml("child.yaml", "base: base.yaml\n"))
    assert problems_of(exc)[0].startswith(f"{base}:12: parallel.zero_stage")


def test_missing_base_and_cycles(write_yaml):
    path = write_yaml("child.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=rf"{path}:1: base: base file not found: .*nowhere.yaml"):
        load_config(path)
    write_yaml("x.yaml", "base: y.yaml\n")
    write_yaml("y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="inheritance cycle"):
        load_config(path.parent / "x.yaml")


# ------------------------------------------------------------------ overrides


def test_override_nested_key_and_list_item(write_yaml):
    path = write_yaml("job.yaml", TINY)
    loaded = load_config(
        path,
        [
            "model.hidden_size=512",
            "data.sources[0].weight=3",
            "optimizer.betas=[0.8, 0.9]",
            "parallel.precision=bf16",
            "train.tokens=2e9",
        ],
    )
    cfg = loaded.config
    assert cfg.model.hidden_size == 512 and cfg.data.sources[0].weight == 3.0
    assert cfg.optimizer.betas == (0.8, 0.9) and cfg.parallel.precision == "bf16" and cfg.train.tokens == 2 * 10**9
    assert loaded.where("model.hidden_size") == "--set model.hidden_size=512"
    assert loaded.where("model.num_layers") == f"{path}:4"


def test_override_errors_name_the_override(write_yaml):
    path = write_yaml("job.yaml", TINY)
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["model.hidden_sise=512"])
    assert problems_of(exc)[0].startswith("--set model.hidden_sise=512: model.hidden_sise: unknown key")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["model.hidden_size"])
    with pytest.raises(ConfigError, match=r"data.sources\[5\]: no list item 5 \(the list has 1\)"):
        load_config(path, ["data.sources[5].weight=2"])
    with pytest.raises(ConfigError, match="--set parallel.zero_stage=5: parallel.zero_stage"):
        load_config(path, ["parallel.zero_stage=5"])


def test_override_shows_in_resolved_config_and_round_trips(write_yaml, tmp_path):
    loaded = load_config(write_yaml("job.yaml", TINY), ["model.hidden_size=256", "parscale.streams=4"])
    out = write_resolved(loaded, tmp_path / "out")
    text = out.read_text()
    assert "# override: --set model.hidden_size=256" in text
    data = yaml.safe_load(text)
    assert data["model"]["hidden_size"] == 256 and data["parscale"]["streams"] == 4
    assert data["parallel"]["zero_stage"] == 1  # defaults are written out too
    again = load_config(out)
    assert again.config == loaded.config
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_runtime_error_uses_provenance(write_yaml):
    path = write_yaml("job.yaml", TINY + "parallel:\n  data_parallel_size: 4\n")
    loaded = load_config(path)
    err = loaded.error("parallel.data_parallel_size", "4 x 1 != world size 2")
    assert f"{path}:12: parallel.data_parallel_size: 4 x 1 != world size 2" in str(err)


def test_global_batch_must_split_over_data_parallel_ranks(write_yaml):
    text = TINY + "parallel:\n  micro_batch_size: 4\n  global_batch_size: 16\n"
    cfg = load_config(write_yaml("ok.yaml", text)).config
    assert cfg.parallel.grad_accum_steps(2) == 2 and cfg.parallel.grad_accum_steps(4) == 1
    with pytest.raises(ValueError, match=r"not a multiple of micro_batch_size x data-parallel size \(4 x 3\)"):
        cfg.parallel.grad_accum_steps(3)
    with pytest.raises(ConfigError, match=r"parallel.global_batch_size: 16 is not a multiple .* \(4 x 3\)"):
        load_config(write_yaml("bad.yaml", text + "  data_parallel_size: 3\n"))


def test_an_ffn_size_tp_cannot_split_is_refused_at_validation_by_the_checkpoint_layouts_rule(write_yaml):
    from pipeline.checkpoint.tp_partition import tp_problem

    path = write_yaml("job.yaml", TINY + "parallel:\n  tensor_parallel_size: 2\n")
    cfg = load_config(path).config
    bad = cfg.model.model_copy(update={"ffn_hidden_size": cfg.model.ffn_hidden_size + 1})
    path.write_text(
        path.read_text().replace(
            f"ffn_hidden_size: {cfg.model.ffn_hidden_size}", f"ffn_hidden_size: {bad.ffn_hidden_size}"
        )
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any(
        f"parallel.tensor_parallel_size: 2 does not divide model.ffn_hidden_size ({bad.ffn_hidden_size})" in p
        for p in problems_of(exc)
    )
    assert tp_problem(bad, 2) == f"TP=2 does not divide model.ffn_hidden_size={bad.ffn_hidden_size}"


def test_a_derived_config_is_typed_validated_once_and_equals_the_same_keys_loaded(write_yaml):
    import json

    from pipeline.config.model import ParScaleConfig

    path = write_yaml("job.yaml", TINY + "packing:\n  strategy: best_fit\n")
    loaded = load_config(path, ["model.hidden_size=128"])
    parscale = ParScaleConfig(streams=4, prefix_len=8)
    derived = loaded.derive("stage 2 (P=4)", {"parscale": parscale, "train.tokens": 100, "train.skip_tokens": None})
    as_overrides = [f"parscale={json.dumps(parscale.model_dump(mode='json'))}", "train.tokens=100"]
    assert derived.config == load_config(path, ["model.hidden_size=128", *as_overrides]).config
    assert derived.config.parscale == parscale and derived.config.model.hidden_size == 128
    assert "seq_len" not in derived.config.packing.model_fields_set  # what the YAML left unset stays unset
    assert derived.overrides == ["model.hidden_size=128", *as_overrides, "train.skip_tokens=null"]
    assert loaded.config.parscale.streams == 1  # the config derived from is unchanged
    with pytest.raises(ConfigError) as err:
        loaded.derive("stage 2 (P=4)", {"train.tokens": 0})
    assert problems_of(err) == ["stage 2 (P=4): train.tokens: Input should be greater than 0 (got 0)"]
