"""Running the launch scripts in tests: a clean environment, and stand-ins for SLURM's ``srun`` and
``scontrol`` so the sbatch scripts run for real on one machine."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from .paths import REPO

LAUNCH = REPO / "launch"
LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "NNODES",
    "NPROC_PER_NODE",
    "OMP_NUM_THREADS",
    "DRY_RUN",
)

FAKE_SRUN = """#!/usr/bin/env bash
# srun stand-in: runs the step's one task here, without srun's own options
while [ $# -gt 0 ] && [[ $1 == -* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0
exec "$@"
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol stand-in: host lists through our expander, and every other call written to $SCONTROL_LOG
if [ "$1 $2" = "show hostnames" ]; then
  exec "{python}" -m pipeline.distributed.hostlist "$3"
fi
echo "$*" >>"$SCONTROL_LOG"
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHON"] = sys.executable
    return {**env, **extra}


def run_script(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LAUNCH / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env if env is not None else clean_env(),
    )


def fake_slurm(folder: Path) -> Path:
    """A bin folder with srun and scontrol stand-ins; put it first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL.replace("{python}", sys.executable)}.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def words(line: str) -> list[str]:
    return shlex.split(line)
