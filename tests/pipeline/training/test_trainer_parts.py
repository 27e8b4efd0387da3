"""The trainer's parts the caller owns and composes (``run.train``): building a trainer starts no
process group and installs no signal handler; ``stop_signals`` and ``distributed_world`` give back
what they took, also after an error; the callbacks act in list order after every step, with the
losses read before any callback that reads them, and one appended to the defaults runs too (none:
the steps alone); a stop requested before the run saves and ends it at the first step every rank
can agree on."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.distributed as dist
import yaml
from helpers.training import job_config
from megatron.core import parallel_state

from pipeline.config import ConfigError
from pipeline.config.job import JobConfig
from pipeline.distributed import distributed_world
from pipeline.training.callbacks import (
    Callback,
    Checkpointing,
    Evaluation,
    Logging,
    NonfiniteGuard,
    PortableExport,
    StopRequests,
    default_callbacks,
)
from pipeline.training.signals import STOP_SIGNALS, stop_signals
from pipeline.training.trainer import Trainer


def _job(tmp_path, data, name: str = "parts", **sections) -> JobConfig:
    return JobConfig.model_validate(yaml.safe_load(job_config(tmp_path, data, name, **sections).read_text()))


def _handlers() -> dict:
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


def test_building_a_trainer_starts_no_process_group_and_installs_no_signal_handler(
    tmp_path, prepared_data, single_rank, monkeypatch
):
    cfg = _job(tmp_path, prepared_data)
    ctx = single_rank(cfg)
    import deepspeed  # once the world chose its accelerator

    handlers, world = _handlers(), (dist.is_initialized(), dist.group.WORLD, parallel_state.get_data_parallel_group())
    started = []
    for module, name in (
        (dist, "init_process_group"),
        (dist, "new_group"),
        (deepspeed, "init_distributed"),
        (parallel_state, "initialize_model_parallel"),
        (parallel_state, "destroy_model_parallel"),
        (dist, "destroy_process_group"),
    ):
        monkeypatch.setattr(module, name, lambda *args, name=name, **kwargs: started.append(name))
    trainer = Trainer(cfg, ctx)
    assert started == []
    assert _handlers() == handlers
    assert (dist.is_initialized(), dist.group.WORLD, parallel_state.get_data_parallel_group()) == world
    assert trainer.ctx is ctx and not trainer.stop.is_set() and not trainer.stop_agreed


def test_stop_signals_set_the_event_inside_and_put_the_handlers_back_after():
    before = _handlers()
    with stop_signals() as stop:
        assert not stop.is_set() and _handlers() != before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.wait(5)
    assert _handlers() == before
    with pytest.raises(RuntimeError, match="boom"), stop_signals():
        raise RuntimeError("boom")
    assert _handlers() == before


def test_distributed_world_is_torn_down_after_an_error_inside_and_after_a_refused_start(
    tmp_path, prepared_data, single_rank
):
    cfg = _job(tmp_path, prepared_data)
    with pytest.raises(RuntimeError, match="boom"), distributed_world(cfg) as ctx:
        assert dist.is_initialized() and ctx.world_size == 1 and parallel_state.model_parallel_is_initialized()
        raise RuntimeError("boom")
    assert not dist.is_initialized() and not parallel_state.model_parallel_is_initialized()
    tp2 = _job(tmp_path, prepared_data, parallel={"tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="parallel.tensor_parallel_size: 2 does not divide the world size 1"):
        with distributed_world(tp2):
            pass
    assert not dist.is_initialized()


class Recorder(Callback):
    """Every hook call, with the last step whose loss was read when a step's callbacks ran."""

    def __init__(self, reads_every: int):
        self.reads_every, self.calls = reads_every, []

    def reads_losses(self, trainer, step: int) -> bool:
        return step % self.reads_every == 0

    def on_train_start(self, trainer) -> None:
        self.calls.append(("start", trainer.step))

    def on_step_end(self, trainer, step: int) -> None:
        self.calls.append(("step", step, trainer.last.step if trainer.last else None))

    def on_train_end(self, trainer) -> None:
        self.calls.append(("end", trainer.step, trainer.stop_agreed))


def test_the_default_callbacks_act_in_order_and_one_appended_runs_after_them(tmp_path, prepared_data, single_rank):
    cfg = _job(tmp_path, prepared_data, train={"tokens": 5 * 8 * 32}, logging={"interval_steps": 4})
    defaults = default_callbacks(cfg)
    assert [type(c) for c in defaults] == [
        StopRequests,
        Logging,
        NonfiniteGuard,
        Evaluation,
        Checkpointing,
        PortableExport,
    ]
    recorder = Recorder(reads_every=3)
    trainer = Trainer(cfg, single_rank(cfg), callbacks=[*defaults, recorder])
    result = trainer.run()
    assert result["stopped"] is False and result["step"] == 5 and result["portable"].endswith("portable")
    # losses read at steps 3 (the recorder), 4 (logging, checkpoint) and 5 (the last step's log)
    assert recorder.calls == [
        ("start", 0),
        ("step", 1, None),
        ("step", 2, None),
        ("step", 3, 3),
        ("step", 4, 4),
        ("step", 5, 5),
        ("end", 5, False),
    ]
    assert result["loss"] == trainer.last.loss_value and torch.isfinite(torch.tensor(result["loss"]))
    tags = sorted(p.name for p in (tmp_path / "parts" / "checkpoints").glob("step*"))
    assert tags == ["step00000004", "step00000005"]


def test_a_stop_requested_before_the_run_saves_and_ends_it_at_step_2(tmp_path, prepared_data, single_rank, capsys):
    cfg = _job(tmp_path, prepared_data, checkpoint={"interval_steps": 100})
    recorder = Recorder(reads_every=100)
    trainer = Trainer(cfg, single_rank(cfg), callbacks=[*default_callbacks(cfg), recorder])
    trainer.stop.set()  # as a stop signal would, while the trainer was being built
    assert trainer.run() == {"stopped": True, "step": 2}  # the first post is agreed one step later
    assert recorder.calls[-1] == ("end", 2, True) and recorder.calls[-2] == ("step", 2, 2)
    assert [p.name for p in (tmp_path / "parts" / "checkpoints").glob("step*")] == ["step00000002"]
    assert not (tmp_path / "parts" / "portable").exists()
    assert "stop requested: saved step 2" in capsys.readouterr().out


def test_without_callbacks_a_run_is_its_steps_alone(tmp_path, prepared_data, single_rank):
    cfg = _job(tmp_path, prepared_data, train={"tokens": 3 * 8 * 32})
    result = Trainer(cfg, single_rank(cfg), callbacks=[]).run()
    assert result.keys() == {"stopped", "step", "loss", "skipped"} and result["step"] == 3
    assert torch.isfinite(torch.tensor(result["loss"])) and result["skipped"] == 0  # read once, at the end
    run = tmp_path / "parts"
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    assert not (run / "portable").exists()
