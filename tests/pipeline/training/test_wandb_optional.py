"""wandb is optional: a GPU machine set up from launch/gpu_wheels.sh has no wandb, and the default
``logging.wandb_mode: offline`` must not crash there. With wandb unimportable the trainer builds,
logs its records to metrics.jsonl, and says once where metrics go; ``online`` (asked for
explicitly) is refused naming the key."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from helpers.training import job_config

from pipeline.config.job import JobConfig
from pipeline.errors import UserError
from pipeline.training.metrics import MetricsSink
from pipeline.training.trainer import Trainer


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError


def _cfg(tmp_path, data, **logging) -> JobConfig:
    path = job_config(tmp_path, data, "nowandb", logging={"interval_steps": 1, **logging}, train={"tokens": 2 * 8 * 32})
    return JobConfig.model_validate(yaml.safe_load(path.read_text()))


def test_without_wandb_the_trainer_runs_and_says_once_that_metrics_go_to_jsonl_only(
    tmp_path, prepared_data, single_rank, no_wandb, capsys
):
    cfg = _cfg(tmp_path, prepared_data, wandb_mode="offline")
    trainer = Trainer(cfg, single_rank(cfg))
    trainer.run()
    err = capsys.readouterr().err
    assert err.count("wandb cannot be imported") == 1
    assert f"metrics go to {trainer.sink.path} only" in err
    records = [json.loads(line) for line in trainer.sink.path.read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind", "train") == "train"] == [1, 2]


def test_online_without_wandb_is_refused_naming_the_key(tmp_path, prepared_data, no_wandb):
    cfg = _cfg(tmp_path, prepared_data, wandb_mode="online")
    with pytest.raises(UserError, match=r"logging.wandb_mode: online, but wandb cannot be imported"):
        MetricsSink(cfg, enabled=True)


def test_other_ranks_never_import_wandb(tmp_path, prepared_data, no_wandb, capsys):
    MetricsSink(_cfg(tmp_path, prepared_data, wandb_mode="online"), enabled=False)
    assert "wandb" not in capsys.readouterr().err
