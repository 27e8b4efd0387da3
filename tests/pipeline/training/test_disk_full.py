"""A full disk is named, never a traceback: the CLI's handler, a checkpoint save (torch says only
"file write failed"), and prep (a Ray worker's error arrives wrapped)."""

from __future__ import annotations

import errno

import pytest

from pipeline import cli
from pipeline.errors import UserError
from pipeline.training import checkpointing
from pipeline.utils import fs


def test_out_of_space_looks_through_wrapped_errors_and_at_the_disk(tmp_path, monkeypatch):
    full = OSError(errno.ENOSPC, "No space left on device", "/data/x.bin")

    class Wrapped(Exception):  # like Ray's RayTaskError: the worker's error as .cause
        cause = full

    assert fs.out_of_space(Wrapped("worker died"), tmp_path)
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("writer failed") from inner
    except RuntimeError as outer:
        assert fs.out_of_space(outer, tmp_path)
    assert not fs.out_of_space(RuntimeError("file write failed"), tmp_path)  # this disk has room
    monkeypatch.setattr(fs.shutil, "disk_usage", lambda path: type("U", (), {"free": 4096})())
    assert fs.out_of_space(RuntimeError("file write failed"), tmp_path / "not" / "yet")  # nearly full now


def test_a_checkpoint_save_on_a_full_disk_names_the_folder_and_the_resume(tmp_path, monkeypatch):
    class Engine:
        def save_checkpoint(self, *args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(fs.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    with pytest.raises(UserError) as err:
        checkpointing.save(Engine(), tmp_path / "ck", 12, {"step": 12}, 2, "")
    assert f"no space left on device: {tmp_path / 'ck' / 'step00000012'} (saving step 12)" in str(err.value)
    assert "resumes from the last complete checkpoint" in str(err.value)


def test_the_cli_turns_enospc_into_a_named_exit_2(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/demo/data/train/shard_00003.bin")

    parser = cli.build_parser()
    args = parser.parse_args(["config", "configs/demo.yaml"])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    args.func = full
    assert cli.main([]) == 2
    assert "no space left on device: /runs/demo/data/train/shard_00003.bin" in capsys.readouterr().err


def test_prep_on_a_full_disk_is_a_named_error(tmp_path, monkeypatch):
    import yaml

    import data_prep.prepare as prep_job
    from pipeline.config import load_config

    cfg = {
        "data": {"sources": [{"type": "stdlib", "glob": "json/*.py"}], "output_dir": str(tmp_path / "out")},
        "tokenizer": {"vocab_size": 400, "sample_docs": 40},
        "packing": {"seq_len": 32},
    }
    path = tmp_path / "prep.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "work" / "unit_0.npy"))

    monkeypatch.setattr(prep_job, "_tokenize_and_pack", full)
    with pytest.raises(prep_job.PrepError, match=f"no space left on device: {tmp_path / 'out'}; free space and rerun"):
        prep_job.prepare(load_config(path))


def test_a_partial_metrics_line_is_cut_on_resume_and_readers_skip_malformed_lines(tmp_path, capsys):
    from pipeline.training.metrics import MetricsSink, read_records

    run = tmp_path / "run"
    run.mkdir()
    metrics = run / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # the disk filled mid-line
    from pipeline.config.job import JobConfig

    cfg = JobConfig.model_validate(
        {"run": {"output_dir": str(run), "name": "x"}, "logging": {"wandb_mode": "disabled"}}
    )
    sink = MetricsSink(cfg, enabled=True)
    assert f"warning: {metrics}: removed a partial last line (15 bytes)" in capsys.readouterr().err
    sink.log({"step": 2, "loss": 1.5})
    assert [r["step"] for r in read_records(metrics)] == [1, 2]
    metrics.write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 3, "loss": 1.0}\n')
    assert [r["step"] for r in read_records(metrics)] == [1, 3]
    assert f"warning: {metrics}: skipped 1 malformed line(s)" in capsys.readouterr().err


def test_a_full_disk_during_the_portable_export_names_the_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from pipeline.checkpoint import portable
    from pipeline.config.model import ModelConfig, ParScaleConfig

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: ... })")

    monkeypatch.setattr(portable, "save_file", full)
    monkeypatch.setattr(fs.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    model = ModelConfig(num_layers=1, hidden_size=16, ffn_hidden_size=32, num_attention_heads=2, num_kv_heads=2)
    with pytest.raises(OSError) as err:
        portable.save_portable_state({}, model, ParScaleConfig(), 8, tmp_path / "portable")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "portable" / "model.safetensors")
    assert not (tmp_path / "portable").exists()  # nothing half-written under the final name
