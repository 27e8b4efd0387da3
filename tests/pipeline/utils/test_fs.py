"""Writes under a temporary name: the file appears whole or not at all, with the usual mode."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.utils.fs import atomic_write_text, staged_dir, staged_file


def test_a_staged_file_appears_whole_with_the_usual_mode_or_not_at_all(tmp_path):
    mask = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "a.json", "{}")
        assert target.read_text() == "{}" and stat.S_IMODE(target.stat().st_mode) == 0o644
        with pytest.raises(RuntimeError), staged_file(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed midway")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no b.bin, no temporary left
        with staged_dir(tmp_path / "folder", "test output") as folder:
            (folder / "x").write_text("x")
        assert (tmp_path / "folder" / "x").read_text() == "x"
    finally:
        os.umask(mask)


def test_a_staged_folder_replaces_only_an_earlier_output_of_its_kind(tmp_path):
    from pipeline.utils.fs import TargetError

    target = tmp_path / "out"
    with staged_dir(target, "portable checkpoint") as folder:
        (folder / "a").write_text("1")
    with staged_dir(target, "portable checkpoint") as folder:  # its own earlier output: replaced
        (folder / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [".parscale-output", "b"]
    with pytest.raises(TargetError, match="not an earlier Hugging Face export output"):
        with staged_dir(target, "Hugging Face export"):
            pass
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(TargetError, match=r"precious: exists, is not empty .* \(nothing was changed\)"):
        with staged_dir(precious, "portable checkpoint"):
            pass
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert not any(p.name.startswith(".precious") for p in tmp_path.iterdir())  # no staging left either
    (tmp_path / "empty").mkdir()
    with staged_dir(tmp_path / "empty", "portable checkpoint") as folder:  # an empty folder is free to use
        (folder / "c").write_text("3")


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_a_target_that_is_inside_or_holds_its_source_is_refused(tmp_path, where):
    from pipeline.utils.fs import TargetError

    source = tmp_path / "run"
    (source / "checkpoints").mkdir(parents=True)
    target = {"same": source, "inside": source / "portable", "holds": tmp_path}[where]
    with pytest.raises(TargetError, match="the source"):
        with staged_dir(target, "portable checkpoint", (source,)):
            pass
    assert (source / "checkpoints").is_dir()
