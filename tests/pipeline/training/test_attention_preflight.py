"""The trainer's start-up check of FlexAttention, on CPU with the CUDA path faked (``flex.compiles``
patched True) and ``torch.compile`` failing as it does where Triton cannot build its launcher: under
``auto`` the trainer says once that it uses sdpa and why, its model runs sdpa (a step trains without
touching the broken compile); a forced ``flex`` is a config error naming ``model.attention_backend``."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers.training import job_config

from pipeline.config import ConfigError
from pipeline.config.job import JobConfig
from pipeline.model import flex
from pipeline.training.trainer import Trainer


@pytest.fixture
def broken_triton(monkeypatch):
    def broken(fn, **options):
        def run(*args, **kwargs):
            raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

        return run

    monkeypatch.setattr(flex, "compiles", lambda device: True)
    monkeypatch.setattr(flex, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)


def _cfg(tmp_path, data, backend: str) -> JobConfig:
    path = job_config(tmp_path, data, "preflight", model={"attention_backend": backend}, parscale={"streams": 2})
    return JobConfig.model_validate(yaml.safe_load(path.read_text()))


def test_auto_falls_back_to_sdpa_with_one_warning(tmp_path, prepared_data, single_rank, broken_triton, capsys):
    cfg = _cfg(tmp_path, prepared_data, "auto")
    trainer = Trainer(cfg, single_rank(cfg))
    err = capsys.readouterr().err
    assert err.count("model.attention_backend: auto uses sdpa") == 1 and "Failed to find C compiler" in err
    assert trainer.attention_backend == "sdpa" and trainer.engine.module.attention_backend == "sdpa"
    trainer.train_step()  # flex would call the broken compile
    trainer.resolve()
    assert trainer.last.loss_value > 0


def test_a_forced_flex_that_cannot_compile_is_a_config_error(tmp_path, prepared_data, single_rank, broken_triton):
    cfg = _cfg(tmp_path, prepared_data, "flex")
    with pytest.raises(ConfigError, match=r"model.attention_backend.*flex cannot run on cpu.*C compiler"):
        Trainer(cfg, single_rank(cfg))
