"""Test-wide setup: keep every cache and temp file of the tools under the checkout's .cache/, and
shared helpers for running the CLI and torchrun as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
CONFIGS = REPO / "configs"

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


def run_cli(*args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the installed ``parscale`` console script (the same one the README uses)."""
    exe = Path(sys.executable).parent / "parscale"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def run_module(module: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` in a clean single process (no launcher variables)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**clean, **(env or {})},
    )


@pytest.fixture
def write_yaml(tmp_path: Path):
    """write_yaml('name.yaml', text) -> path, in this test's temp folder."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> Path:
    """The tiny prepared dataset the training tests read, prepared once per session (never written
    to: a test that damages data copies it first)."""
    from train_helpers import prepare_data

    return prepare_data(tmp_path_factory.mktemp("prepared"))
