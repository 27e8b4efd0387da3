"""benchmarks/gpu_step.py on a machine without CUDA: --help works, a plain run exits 2 saying no
GPU is visible, and --allow-cpu runs the whole script (our engine, the plain loop, both
checkpointing settings) on a tiny model, so the code a GPU run executes is exercised in CI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.paths import REPO

SCRIPT = str(REPO / "benchmarks" / "gpu_step.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0 and "--peak-tflops" in proc.stdout and "MFU" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")
def test_without_cuda_it_exits_2_and_says_why():
    proc = _run()
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr


def test_the_script_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run("--allow-cpu", "--streams", "2", "--steps", "1", "--warmup", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    kinds = {(r["streams"], r["attention"], r["checkpointing"]) for r in rows}
    assert kinds == {(2, a, c) for a, c in (("plain", False), ("sdpa", False), ("sdpa", True))}
    assert all(r["tokens_per_s"] > 0 and r["step_s"] > 0 for r in rows)
