"""A training stage of one process runs in the job's own process: as a world of its own whatever
launcher started the job, its stop (signal or stop file) named as a stop with the way to resume,
the job's signal handlers put back after, and a rerun resumes and finishes."""

from __future__ import annotations

import os
import signal

import pytest
from helpers.training import job_config, step_losses

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.mainjob.stages import is_trained, train_stage
from pipeline.training.trainer import Trainer


def test_a_one_process_stage_runs_here_stops_by_name_and_resumes(tmp_path, prepared_data, monkeypatch):
    outer = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "10.9.9.9", "MASTER_PORT": "1"}
    for key, value in outer.items():  # as if the job itself were one rank of some outer launch
        monkeypatch.setenv(key, value)
    before = signal.getsignal(signal.SIGTERM)
    stop = tmp_path / "STOP"
    step = Trainer.train_step

    def step_then_stop(self):  # the stop file appears during the run (one there at start-up is refused)
        outcome = step(self)
        if self.step == 2:
            stop.touch()
        return outcome

    monkeypatch.setattr(Trainer, "train_step", step_then_stop)
    loaded = load_config(job_config(tmp_path, prepared_data, "stage", checkpoint={"stop_file": str(stop)}))
    with pytest.raises(
        UserError, match=r"stage training stopped before the end of its budget \(signal or stop file\); rerun"
    ):
        train_stage(loaded, "stage", 1, dry_run=False)
    assert signal.getsignal(signal.SIGTERM) is before
    assert {key: os.environ[key] for key in outer} == outer
    assert not stop.exists() and not is_trained(loaded)
    stopped_at = max(step_losses(tmp_path / "stage"))
    monkeypatch.setattr(Trainer, "train_step", step)
    train_stage(loaded, "stage", 1, dry_run=False)  # resumes from the stop's checkpoint
    assert is_trained(loaded) and max(step_losses(tmp_path / "stage")) == 8 and stopped_at < 8
    assert signal.getsignal(signal.SIGTERM) is before
