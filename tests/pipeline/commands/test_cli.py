"""The ``parscale`` console script: help for every subcommand, config errors, resolved output."""

from __future__ import annotations

import pytest
import yaml
from helpers.paths import CONFIGS
from helpers.process import cli, run_cli

from pipeline.cli import build_parser

SUBCOMMANDS = ["prep", "train", "convert", "eval", "generate", "run", "config"]


def test_help_lists_every_subcommand():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in proc.stdout, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    assert f"usage: parscale {name}" in capsys.readouterr().out


def test_misspelt_key_is_refused_naming_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (CONFIGS / "demo.yaml")
        .read_text()
        .replace("  hidden_size: 128", "  hiden_size: 128")
        .replace("base: prep_stdlib.yaml", f"base: {CONFIGS / 'prep_stdlib.yaml'}")
    )
    proc = cli("train", str(bad))
    assert proc.returncode == 2
    assert f"invalid config {bad}" in proc.stderr
    assert "model.hiden_size: unknown key; did you mean 'hidden_size'?" in proc.stderr
    assert f"{bad}:" in proc.stderr


def test_nested_override_takes_effect_in_saved_resolved_config(tmp_path):
    proc = cli(
        "config",
        str(CONFIGS / "demo.yaml"),
        "--set",
        "model.hidden_size=256",
        "--set",
        "optimizer.lr=1e-3",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((tmp_path / "config.resolved.yaml").read_text())
    assert saved["model"]["hidden_size"] == 256 and saved["optimizer"]["lr"] == 1e-3
    assert saved["model"]["num_layers"] == 4  # the rest still comes from the file


def test_config_get_prints_resolved_values_one_per_line():
    proc = cli(
        "config",
        str(CONFIGS / "demo.yaml"),
        "--set",
        "model.hidden_size=256",
        "--get",
        "model.hidden_size",
        "--get",
        "checkpoint.stop_file",
        "--get",
        "data.sources[0].type",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["256", "null", "stdlib"]
    missing = cli("config", str(CONFIGS / "demo.yaml"), "--get", "model.hiden_size")
    assert missing.returncode == 2 and "--get model.hiden_size: no such key" in missing.stderr


def test_config_schema_is_json(tmp_path):
    import json

    proc = cli("config", "--schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert {"model", "parscale", "parallel", "train"} <= set(schema["properties"])


def test_demo_run_dry_run_plans_every_stage_with_tp_x_dp_processes(tmp_path):
    """The shipped demo config is a valid main job (the whole run is tested in test_main_job.py)."""
    proc = cli(
        "run",
        str(CONFIGS / "demo.yaml"),
        "--dry-run",
        "--set",
        f"run.output_dir={tmp_path}",
        "--set",
        f"data.output_dir={tmp_path / 'data'}",
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.count("pipeline.distributed.torchrun_main --nproc_per_node=2 --standalone -m pipeline.cli train")
        == 3
    )
    assert "OMP_NUM_THREADS=" in proc.stdout and "--streams 4" in proc.stdout
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
