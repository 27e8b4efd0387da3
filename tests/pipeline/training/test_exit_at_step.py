"""``checkpoint.exit_at_step`` (Megatron-LM's --exit-interval): the run saves and stops at that step,
a rerun with the same config resumes from it and finishes, and the losses equal an uninterrupted
run's bit for bit (the setting is not part of the run's identity, so the rerun may drop it)."""

from __future__ import annotations

from helpers.training import job_config, step_losses

from pipeline.config import load_config
from pipeline.distributed.runtime import LAUNCHER_VARS
from pipeline.training.train import train


def test_exit_at_step_saves_stops_and_the_rerun_finishes_bit_identically(tmp_path, prepared_data, monkeypatch, capsys):
    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)
    stopped = job_config(tmp_path, prepared_data, "stopped", checkpoint={"interval_steps": 100, "exit_at_step": 3})
    first = train(load_config(stopped))
    assert first["stopped"] and first["step"] == 3
    assert "checkpoint.exit_at_step: 3 reached: saving and stopping" in capsys.readouterr().out
    assert max(step_losses(tmp_path / "stopped")) == 3

    again = train(load_config(stopped))  # the same command: resumes at 3, does not stop there again
    assert not again["stopped"] and again["step"] == 8
    assert "resumed from" in capsys.readouterr().out

    whole = job_config(tmp_path, prepared_data, "whole", checkpoint={"interval_steps": 100})
    train(load_config(whole))
    assert step_losses(tmp_path / "stopped") == step_losses(tmp_path / "whole")
