"""benchmarks/gpu_step.py: --help works; without CUDA a plain run exits 2 saying no GPU is visible;
--allow-cpu --tiny runs the whole script (our engine, the plain loop, activation checkpointing on
from P = 4 by default, the SDPA kernel of each row) on a tiny model, flex rows too where CUDA is
visible, so the code a GPU run executes is exercised in CI. A row that runs out of memory is
recorded as such and the others complete, the JSON rewritten after each row; an SDPA row whose
kernel is math is flagged with torch's reasons."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from helpers.paths import REPO

SCRIPT = str(REPO / "benchmarks" / "gpu_step.py")
FUSED_OR_MATH = {"flash", "efficient", "cudnn", "math"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def gpu_step():
    """The script as a module, for in-process runs of ``main``."""
    spec = importlib.util.spec_from_file_location("gpu_step_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0 and "--peak-tflops" in proc.stdout and "MFU" in proc.stdout
    assert "on for P >= 4" in proc.stdout and '"oom"' in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot happen")
def test_without_cuda_it_exits_2_and_says_why():
    proc = _run()
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr


def test_the_script_runs_end_to_end(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run("--allow-cpu", "--tiny", "--streams", "2,4", "--steps", "1", "--warmup", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    cuda = torch.cuda.is_available()
    engines = ["sdpa"] + (["flex"] if cuda and "flex_unavailable" not in report else [])
    # checkpointing "auto": off at P = 2, on at P = 4
    expected = {(p, "plain", False) for p in (2, 4)} | {(p, b, p >= 4) for p in (2, 4) for b in engines}
    assert {(r["streams"], r["attention"], r["checkpointing"]) for r in rows} == expected
    assert len(rows) == len(expected)
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 and r["step_s"] > 0 for r in rows)
    for row in rows:
        if row["attention"] == "flex":
            assert row.get("sdpa_kernel") is None
            continue
        assert row["sdpa_kernel"] in (FUSED_OR_MATH if cuda else {"cpu"})
        # the exact shapes of the model's attention: P x micro rows, the prefix's 48 keys after T
        assert row["sdpa_shape"][0] == row["streams"] * report["micro"] and row["sdpa_mask"]
        assert row["sdpa_shape"][3] == report["seq"] + 48


def test_an_oom_row_is_recorded_and_the_others_complete(gpu_step, tmp_path, monkeypatch):
    out = tmp_path / "rows.json"
    rows_on_disk = []  # rows in the JSON file each time a row starts: streamed, not written at the end
    measure = gpu_step.measure_engine

    def measure_or_oom(cfg, args, device, micro):
        rows_on_disk.append(len(json.loads(out.read_text())["rows"]))
        if cfg.parscale.streams == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return measure(cfg, args, device, micro)

    monkeypatch.setattr(gpu_step, "measure_engine", measure_or_oom)
    argv = ["--allow-cpu", "--tiny", "--streams", "2,1", "--backends", "sdpa", "--no-baseline"]
    assert gpu_step.main([*argv, "--steps", "1", "--warmup", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["streams"], r["status"]) for r in rows] == [(2, "oom"), (1, "ok")]
    assert "step_s" not in rows[0] and rows[1]["step_s"] > 0
    assert rows_on_disk == [0, 1]
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary name, renamed


def test_checkpointing_choices(gpu_step):
    assert [gpu_step.checkpointing_for("auto", p) for p in (1, 2, 4, 8)] == [[False], [False], [True], [True]]
    assert gpu_step.checkpointing_for("both", 1) == [False, True]
    assert gpu_step.checkpointing_for("off", 8) == [False] and gpu_step.checkpointing_for("on", 1) == [True]
    assert gpu_step.parse_args([]).checkpointing == "auto"


def test_a_math_sdpa_kernel_is_flagged_with_its_reasons(gpu_step, monkeypatch):
    """The CUDA branch on CPU tensors: SDPA's choice patched to math (as a dense mask with GQA may
    leave it), the reasons come from torch's own checks and the table says quadratic memory."""
    from pipeline.config.model import ModelConfig, ParScaleConfig
    from pipeline.distributed import single_process
    from pipeline.model import ParScaleLM

    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a, **k: 0)
    with single_process():
        model = ParScaleLM(ModelConfig(**gpu_step.TINY), ParScaleConfig(streams=2, prefix_len=4), 64)
        model.attention_backend = "sdpa"
        batch = gpu_step.packed_batch(3, 32, 8, 64, torch.device("cpu"), seed=0)
        found = gpu_step.sdpa_kernel(model, batch, torch.device("cuda"))
    assert found["sdpa_kernel"] == "math" and found["sdpa_shape"] == [6, 4, 32, 36, 16]
    assert {reason.split(":")[0] for reason in found["sdpa_why_not_fused"]} >= {"flash", "efficient"}
    row = {"streams": 2, "attention": "sdpa", "checkpointing": False, "status": "ok", "step_s": 1.0}
    row.update(tokens_per_s=1.0, mfu=0.1, peak_gib=None, vs_plain=None, sdpa_kernel="math")
    assert "quadratic memory" in gpu_step.format_row(row)
