"""A full disk is named, never a traceback: the CLI's handler, a checkpoint save (torch says only
"file write failed"), and prep (a Ray worker's error arrives wrapped)."""

from __future__ import annotations

import errno

import pytest

from pipeline import cli
from pipeline.errors import JobError
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
    with pytest.raises(JobError) as err:
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

    from data_prep import job
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

    monkeypatch.setattr(job, "_tokenize_and_pack", full)
    with pytest.raises(job.PrepError, match=f"no space left on device: {tmp_path / 'out'}; free space and rerun"):
        job.prepare(load_config(path))
