"""``parallel.tf32``: applied at start-up on a CUDA device only (cuBLAS and cuDNN TF32 flags); on
the host nothing changes, also with CUDA reported available."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers.training import job_config

from pipeline.config.job import JobConfig
from pipeline.training import trainer as trainer_module
from pipeline.training.engine import set_tf32


def _read() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _write(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture
def flags():
    """The two TF32 flags, both off for the test and restored after it; ``flags()`` reads them."""
    saved = _read()
    _write(False, False)
    yield _read
    _write(*saved)


def test_tf32_is_set_on_a_cuda_device_and_not_on_the_host(flags, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert set_tf32(True, torch.device("cpu")) is False and flags() == (False, False)
    assert set_tf32(True, torch.device("cuda:0")) is True and flags() == (True, True)
    assert set_tf32(False, torch.device("cuda:0")) is True and flags() == (False, False)


def test_the_trainer_applies_parallel_tf32_for_its_device(tmp_path, prepared_data, single_rank, flags, monkeypatch):
    cfg = JobConfig.model_validate(yaml.safe_load(job_config(tmp_path, prepared_data, "tf32").read_text()))
    assert cfg.parallel.tf32 is True  # the default
    calls, real = [], trainer_module.set_tf32
    monkeypatch.setattr(trainer_module, "set_tf32", lambda *args: calls.append((*args, real(*args))))
    trainer_module.Trainer(cfg, single_rank(cfg), callbacks=[])
    assert calls == [(True, torch.device("cpu"), False)]  # asked for, not applied on the host
    assert flags() == (False, False)
