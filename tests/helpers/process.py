"""Running the installed CLI and modules as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .paths import REPO


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
