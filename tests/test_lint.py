"""The tree passes the project's ruff rules (pyflakes, syntax, import order, pyupgrade, bugbear)
and is ``ruff format``-ed."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

TREES = ["pipeline", "data_prep", "checkpoints_tools", "tests", "benchmarks"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_finds_nothing(command):
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), *command, *TREES], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
