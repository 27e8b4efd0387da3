"""Test-wide setup: the suite runs on the CPU also where GPUs are visible (``PARSCALE_TEST_GPU=1``
lets it see them), every cache and temp file of the tools under the checkout's .cache/, and the
session-wide fixtures (helpers to import live in tests/helpers)."""

from __future__ import annotations

import os

#: opt-in to let the suite see this machine's GPUs (the tests are written for gloo on the CPU)
GPU_OPT_IN = "PARSCALE_TEST_GPU"
if os.environ.get(GPU_OPT_IN) != "1":
    # Before anything initialises CUDA, and inherited by every subprocess, torchrun rank and forked
    # worker: no GPU is visible, so "auto" picks gloo and the ranks stay on the host.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import contextlib
import tempfile
from pathlib import Path

import pytest
from helpers.paths import CACHE

for _var, _path in {
    "PARSCALE_CACHE_DIR": CACHE,
    "TORCH_EXTENSIONS_DIR": CACHE / "torch_extensions",
    "TMPDIR": CACHE / "tmp",  # torchrun's run folders, Ray's session folder
    "HF_HOME": CACHE / "hf",
    "WANDB_DIR": CACHE / "wandb",
    "MPLCONFIGDIR": CACHE / "matplotlib",
}.items():
    _path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(_var, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
tempfile.tempdir = None  # re-read TMPDIR


@pytest.fixture
def write_yaml(tmp_path: Path):
    """write_yaml('name.yaml', text) -> path, in this test's temp folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


@pytest.fixture
def single_rank(monkeypatch):
    """A trainer built in this process at world size 1: no launcher variables; ``single_rank(cfg)``
    brings up the process groups of ``cfg`` and gives their context, torn down after the test."""
    from pipeline.distributed import destroy_distributed, distributed_world
    from pipeline.distributed.runtime import LAUNCHER_VARS

    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)
    with contextlib.ExitStack() as worlds:
        yield lambda cfg: worlds.enter_context(distributed_world(cfg))
    destroy_distributed()


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """The tiny prepared dataset the training tests read, prepared once per session (never written
    to: a test that damages data copies it first)."""
    from helpers.training import prepare_data

    return prepare_data(tmp_path_factory.mktemp("prepared"))
