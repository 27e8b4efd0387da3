"""benchmarks/gpu_check.sh, the script a lent GPU runs first, kept working on CPU: ``--cpu`` runs
every step (stage 1 stopped at step 12 and resumed, consolidate, to-parscale P = 4, stage 2, eval,
generate) with gloo, SDPA and a tiny model; each step must pass and leave its output in the one
output folder. ``--help`` names every step; bad input exits 2 before anything runs."""

from __future__ import annotations

import json
import os
import subprocess

from helpers.paths import REPO

SCRIPT = str(REPO / "benchmarks" / "gpu_check.sh")
STEPS = ["env", "stage1", "stage1-resume", "consolidate", "to-parscale", "stage2", "eval", "generate"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def test_help_names_every_step_and_bad_input_exits_2(tmp_path):
    proc = _run("--help")
    assert proc.returncode == 0
    for name in [*STEPS, "gpu_step"]:
        assert f"\n  {name} " in proc.stdout, name
    missing = _run("--data", str(tmp_path / "none"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "no manifest.json: not a prepared folder" in missing.stderr
    assert not (tmp_path / "out").exists()


def test_every_step_passes_on_cpu_and_leaves_its_output(tmp_path, prepared_data):
    out = tmp_path / "out"
    proc = _run("--cpu", "--skip-benchmark", "--data", str(prepared_data), "--out", str(out), "--work", str(tmp_path))
    log = (out / "check.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    verdicts = [line.split()[:2] for line in (out / "summary.txt").read_text().splitlines()[:-1]]
    assert verdicts == [[name, "PASS"] for name in STEPS]
    assert "torch" in (out / "env.txt").read_text()
    assert "exit_at_step: 12 reached" in log and "resumed from" in log
    stage1 = [json.loads(line) for line in (out / "stage1.metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in stage1) == 30
    stage2 = [json.loads(line) for line in (out / "stage2.metrics.jsonl").read_text().splitlines()]
    assert any("stream_spread" in r for r in stage2)  # P = 4 with its stream diagnostics
    assert '"streams": 4' in log  # parscale eval of the stage-2 portable
