"""benchmarks/eval_throughput.py at a tiny size: it builds the model and tasks, times both lm-eval
models on every request type and prints their ratio (the speed itself is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.paths import REPO

SCRIPT = str(REPO / "benchmarks" / "eval_throughput.py")
TINY = ("--hidden", "32", "--layers", "1", "--seq", "128", "--vocab", "300", "--docs", "8", "--repeat", "1")


def test_the_benchmark_runs_at_a_tiny_size_and_prints_the_ratio(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, SCRIPT, *TINY, "--threads", "1", "--json", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio (ours / hf), requests/s over all requests:" in proc.stdout
    assert "torch threads 1" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"loglikelihood", "loglikelihood_rolling", "generate_until"}
    assert rows["loglikelihood"]["requests"] == 8 * 4 and rows["generate_until"]["requests"] == 2
    assert all(row["hf_s"] > 0 and row["ours_s"] > 0 for row in rows.values())
    # the same weights answer alike (a sanity check of the set-up, not of speed)
    assert rows["generate_until"]["agreement"] == "2/2 texts identical"
    assert "32/32 greedy flags equal" in rows["loglikelihood"]["agreement"]
