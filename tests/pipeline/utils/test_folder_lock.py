"""One writer per folder: while one process holds a folder's lock, a training run, a main job or a
converter on that folder is refused at once (exit 2) naming the holder; the lock goes with the
process, kill -9 included; within one process it is re-entrant."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from helpers.paths import REPO
from helpers.process import cli
from helpers.training import job_config

from pipeline.utils.folder_lock import FolderInUse, folder_lock, lock_path_beside, lock_path_in
from pipeline.utils.fs import staged_dir


@pytest.fixture
def holder():
    """holder(lock_file) -> a live process holding that lock (killed at the end)."""
    procs = []

    def _start(path):
        code = textwrap.dedent(
            f"""
            import sys, time
            from pipeline.utils.folder_lock import folder_lock
            with folder_lock({str(path)!r}, "a test holder"):
                print("held", flush=True)
                time.sleep(600)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_held_folder_is_refused_naming_the_holder_until_it_dies(tmp_path, holder):
    lock = lock_path_in(tmp_path / "run")
    proc = holder(lock)
    with pytest.raises(FolderInUse, match=rf"{tmp_path / 'run'}: in use by pid {proc.pid} on \S+ since"):
        with folder_lock(lock, "a second run"):
            pass
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
    proc.wait()
    with folder_lock(lock, "the next run"), folder_lock(lock, "the same process again"):
        assert lock.is_file()
    assert not lock.exists()  # removed by its last holder


def test_a_second_training_run_on_a_held_folder_exits_2(tmp_path, prepared_data, holder, monkeypatch):
    import pipeline.training.train as train_module

    monkeypatch.setattr(train_module, "RERUN_GRACE_S", 0.5)  # the grace a dying holder gets: not what is tested here
    config = job_config(tmp_path, prepared_data, "run")
    proc = holder(lock_path_in(tmp_path / "run"))
    result = cli("train", str(config))
    assert result.returncode == 2 and f"in use by pid {proc.pid}" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_converter_target_being_written_is_refused(tmp_path, holder):
    target = tmp_path / "portable"
    holder(lock_path_beside(target))
    with pytest.raises(FolderInUse, match="in use by pid"):
        with staged_dir(target, "portable checkpoint"):
            pass
    assert not target.exists()


def test_a_prep_output_folder_being_written_is_refused(tmp_path, holder, monkeypatch):
    from helpers.corpus import text_doc, write_jsonl

    import data_prep.prepare as prep_job
    from pipeline.config import load_config

    monkeypatch.setattr(prep_job, "RERUN_GRACE_S", 0.5)
    write_jsonl(tmp_path / "a.jsonl", [text_doc(i) for i in range(20)])
    config = tmp_path / "prep.yaml"
    config.write_text(
        f"data:\n  output_dir: {tmp_path / 'data'}\n  sources: [{{type: jsonl, path: {tmp_path / 'a.jsonl'}}}]\n"
        "tokenizer: {vocab_size: 300}\n"
    )
    proc = holder(lock_path_in(tmp_path / "data"))
    with pytest.raises(FolderInUse, match=rf"{tmp_path / 'data'}: in use by pid {proc.pid} .*\(parscale prep\)"):
        prep_job.prepare(load_config(config))
    assert not (tmp_path / "data" / "work").exists()  # refused before any work
