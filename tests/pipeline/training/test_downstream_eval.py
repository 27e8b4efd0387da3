"""``eval.tasks``: downstream tasks of lm-evaluation-harness on the model in training. A run logs a
``downstream`` record at the chosen steps and at the end, trains bit for bit as the same run
without tasks (the model goes back to train mode and every global generator to its state), and a
config that cannot score the whole model in one process (TP 2, ZeRO 3) is refused naming the key."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers.training import job_config, metrics, step_losses

from pipeline.config import load_config
from pipeline.config.training import EvalConfig
from pipeline.distributed import destroy_distributed
from pipeline.training.callbacks import Callback, DownstreamEval, default_callbacks
from pipeline.training.train import train
from pipeline.training.trainer import Trainer

TASKS = {"tasks": ["parscale_mc"], "tasks_limit": 10}


def _rng_states() -> tuple:
    return random.getstate(), np.random.get_state()[1].tobytes(), torch.get_rng_state().tolist()


class Probe(Callback):
    """The global generators' states and the model's mode at each step end and at the end."""

    def __init__(self):
        self.seen: dict = {}

    def on_step_end(self, trainer, step: int) -> None:
        self.seen[step] = (_rng_states(), trainer.engine.module.training)

    def on_train_end(self, trainer) -> None:
        self.seen["end"] = (_rng_states(), trainer.engine.module.training)


def test_tasks_are_logged_at_their_steps_and_the_run_trains_as_without_them(
    tmp_path, prepared_data, single_rank, capsys
):
    sections = {"train": {"tokens": 4 * 8 * 32}, "eval": {"interval_steps": 2, "max_batches": 1}}
    plain = train(load_config(job_config(tmp_path, prepared_data, "plain", **sections)))
    assert "downstream" not in plain and not any(r.get("kind") == "downstream" for r in metrics(tmp_path / "plain"))
    assert not any(
        isinstance(c, DownstreamEval) for c in default_callbacks(load_config(tmp_path / "plain.yaml").config)
    )

    sections["eval"] |= TASKS  # tasks_interval_steps None: with the validation loss, every 2 steps
    cfg = load_config(job_config(tmp_path, prepared_data, "tasks", **sections)).config
    *defaults, downstream = default_callbacks(cfg)
    assert isinstance(downstream, DownstreamEval)
    before, after = Probe(), Probe()
    result = Trainer(cfg, single_rank(cfg), callbacks=[*defaults, before, downstream, after]).run()

    records = [r for r in metrics(tmp_path / "tasks") if r.get("kind") == "downstream"]
    assert [(r["step"], r["tokens_seen"]) for r in records] == [(2, 2 * 8 * 32), (4, 4 * 8 * 32)]
    for record in records:
        assert 0 <= record["parscale_mc/acc"] <= 1 and 0 <= record["parscale_mc/acc_norm"] <= 1
    assert result["downstream"] == {k: v for k, v in records[-1].items() if k.startswith("parscale_mc/")}
    out = capsys.readouterr().out
    assert "downstream step 2 | parscale_mc acc " in out and "downstream step 4 | parscale_mc acc " in out
    # lm-eval seeds the global generators: they, and the model's train mode, are as they were
    assert before.seen == after.seen and after.seen[2][1] and after.seen["end"][1]
    # the same losses bit for bit, the same final weights
    assert step_losses(tmp_path / "tasks") == step_losses(tmp_path / "plain")
    weights = "portable/model.safetensors"
    assert (tmp_path / "tasks" / weights).read_bytes() == (tmp_path / "plain" / weights).read_bytes()
    destroy_distributed()


def test_when_the_tasks_run():
    assert EvalConfig(interval_steps=200).tasks_every == 200  # None: with the validation loss
    assert EvalConfig(interval_steps=200, tasks_interval_steps=0).tasks_every == 0  # only at the end
    assert EvalConfig(interval_steps=0, tasks_interval_steps=50).tasks_every == 50


@pytest.mark.parametrize(
    "parallel, why",
    [
        ({"tensor_parallel_size": 2}, "parallel.tensor_parallel_size is 2"),
        ({"zero_stage": 3}, "parallel.zero_stage is 3"),
    ],
)
def test_a_layout_that_splits_the_model_trains_without_the_tasks_and_says_so(
    tmp_path, prepared_data, capsys, parallel, why
):
    from types import SimpleNamespace

    path = job_config(tmp_path, prepared_data, "split", eval=TASKS, parallel=parallel)
    callback = DownstreamEval(load_config(path).config)  # the same config serves every layout
    trainer = SimpleNamespace(ctx=SimpleNamespace(is_main=True), step=2, total_steps=4, stop_agreed=False, results={})
    callback.on_train_start(trainer)
    assert f"warning: eval.tasks (parscale_mc) do not run inside this training run: {why}" in capsys.readouterr().err
    callback.on_step_end(trainer, 2)
    callback.on_train_end(trainer)  # nothing scored, no barrier waited for
    assert trainer.results == {}
