"""A folder given where a portable checkpoint is read (``train.init_from``, the converters, eval) that
is not one: a trainer checkpoint folder or a Hugging Face folder is named, with the
``parscale convert`` command that makes a portable checkpoint from it. In-process, files only."""

from __future__ import annotations

import json

import pytest

from pipeline.checkpoint.portable import CheckpointError, read_config
from pipeline.checkpoint.step_folders import COMPLETE, LATEST, STATE


def _trainer_run(root, exported: bool):
    """A run folder: checkpoints/step00000004 (complete), checkpoints/latest, and portable/ if ``exported``."""
    step = root / "run" / "checkpoints" / "step00000004"
    step.mkdir(parents=True)
    (step / STATE).write_text(json.dumps({"step": 4}))
    (step / COMPLETE).write_text("")
    (step.parent / LATEST).write_text(step.name)
    if exported:
        (root / "run" / "portable").mkdir()
        (root / "run" / "portable" / "config.json").write_text(json.dumps({"format": "parscale-portable/1"}))
    return root / "run"


@pytest.mark.parametrize("where", ["run", "checkpoints", "step"])
def test_a_trainer_checkpoint_folder_is_named_with_the_consolidate_command(tmp_path, where):
    run = _trainer_run(tmp_path, exported=False)
    folder = {"run": run, "checkpoints": run / "checkpoints", "step": run / "checkpoints" / "step00000004"}[where]
    with pytest.raises(CheckpointError) as caught:
        read_config(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder}: a trainer checkpoint folder") and "not a portable checkpoint" in message
    assert f"run `parscale convert consolidate {folder} DST` and give DST" in message
    assert "exported at its end" not in message


def test_a_run_folder_with_its_export_also_names_the_export(tmp_path):
    run = _trainer_run(tmp_path, exported=True)
    with pytest.raises(CheckpointError, match="parscale convert consolidate") as caught:
        read_config(run)
    assert f"(or give {run / 'portable'}, the one the run exported at its end)" in str(caught.value)


def test_a_hugging_face_folder_is_named_with_the_import_hf_command(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 32}))
    with pytest.raises(CheckpointError) as caught:
        read_config(hf)
    assert str(caught.value) == (
        f"{hf}: a Hugging Face folder (model_type 'qwen2'), not a portable checkpoint; "
        f"run `parscale convert import-hf {hf} DST` and give DST"
    )


def test_other_folders_keep_the_plain_refusal(tmp_path):
    with pytest.raises(CheckpointError, match=r"config.json: not found \(is .* a portable checkpoint\?\)"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(CheckpointError, match="format 'other/1', expected 'parscale-portable/1'"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="format 'list'"):
        read_config(tmp_path)
