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
        with staged_dir(tmp_path / "folder") as folder:
            (folder / "x").write_text("x")
        assert (tmp_path / "folder" / "x").read_text() == "x"
    finally:
        os.umask(mask)
