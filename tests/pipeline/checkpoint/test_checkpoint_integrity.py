"""Checkpoint records (``files.json``): what they catch, in-process. The trainer's fallback to the
newest intact checkpoint is tested end to end in tests/pipeline/training/test_training.py."""

from __future__ import annotations

from pipeline.checkpoint.integrity import FILES, problems, record


def _folder(tmp_path):
    folder = tmp_path / "step00000004"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"a" * 1000)
    (folder / "sub" / "optim.pt").write_bytes(b"b" * 10)
    (folder / "COMPLETE").write_text("")
    (folder / ".half.tmp").write_bytes(b"ignored")
    return folder


def test_a_record_lists_every_file_but_the_marker_and_temporaries(tmp_path):
    folder = _folder(tmp_path)
    files = record(folder)
    assert sorted(files) == ["model.pt", "sub/optim.pt"] and files["model.pt"]["size"] == 1000
    assert (folder / FILES).exists() and problems(folder) == []


def test_missing_truncated_and_flipped_files_are_each_named(tmp_path):
    folder = _folder(tmp_path)
    record(folder)
    data = bytearray((folder / "model.pt").read_bytes())
    data[500] ^= 1
    (folder / "model.pt").write_bytes(bytes(data))  # same size: only the hash tells
    assert problems(folder, hashes=False) == []
    assert problems(folder) == [f"{folder / 'model.pt'}: sha256 differs from the one recorded at save (corrupt)"]
    (folder / "model.pt").write_bytes(b"a" * 10)
    (folder / "sub" / "optim.pt").unlink()
    assert problems(folder, hashes=False) == [
        f"{folder / 'model.pt'}: 10 bytes, 1000 when saved (truncated or overwritten)",
        f"{folder / 'sub/optim.pt'}: missing",
    ]


def test_a_folder_without_its_record_or_with_a_garbled_one_is_a_problem(tmp_path):
    folder = _folder(tmp_path)
    assert problems(folder) == [
        f"{folder / FILES}: missing (no record of the files' sizes and sha256 to check them against)"
    ]
    (folder / FILES).write_text("{not json")
    assert problems(folder)[0].startswith(f"{folder / FILES}: unreadable record")


def test_a_resume_sets_aside_a_checkpoint_without_its_record_and_says_so(tmp_path, capsys):
    from pipeline.training.checkpointing import intact_tag

    for step in (2, 4):
        folder = tmp_path / f"step{step:08d}"
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"x" * step)
        record(folder)
        (folder / "COMPLETE").write_text("")
    (tmp_path / "latest").write_text("step00000004")
    (tmp_path / "step00000004" / FILES).unlink()  # a flipped byte in it would go unseen: never trusted
    assert intact_tag(tmp_path, distributed=False) == "step00000002"
    err = capsys.readouterr().err
    assert (
        "warning: resuming from" in err
        and f"{tmp_path / 'corrupt-step00000004'}" in err
        and "files.json: missing" in err
    )
    assert (tmp_path / "corrupt-step00000004" / "model.pt").is_file()  # set aside, never deleted


def test_only_damaged_checkpoints_left_is_refused_again_and_an_incomplete_latest_is_named(tmp_path, capsys):
    import pytest

    from pipeline.errors import UserError
    from pipeline.training.checkpointing import intact_tag

    (tmp_path / "corrupt-step00000004").mkdir()  # set aside by the last run, which exited 2
    with pytest.raises(UserError, match="corrupt-step00000004 set aside as damaged before"):
        intact_tag(tmp_path, distributed=False)  # never a silent start from step 0 beside it
    folder = tmp_path / "step00000002"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"x")
    record(folder)
    (folder / "COMPLETE").write_text("")
    (tmp_path / "step00000006").mkdir()  # a save cut short: no marker
    (tmp_path / "latest").write_text("step00000006")
    assert intact_tag(tmp_path, distributed=False) == "step00000002"
    assert f"warning: {tmp_path / 'step00000006'}: an incomplete save" in capsys.readouterr().err
