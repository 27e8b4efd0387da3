"""Running the CLI: as the installed console script in a real subprocess (``run_cli``: what a user
runs; for commands that start launchers, Ray or training), or in this process (``cli``: the same
``main``, its output captured at the file-descriptor level too, for the many quick commands whose
subprocess would spend seconds importing torch each time)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import traceback
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


@contextlib.contextmanager
def _fd_captured(fd: int):
    """Inside, what is written to file descriptor ``fd`` (C++ warnings, child processes) goes to a
    temporary file; yields a function that reads it back."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(fd)
        os.dup2(sink.fileno(), fd)
        try:
            yield lambda: (sink.seek(0), sink.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``parscale args`` in this process (``pipeline.cli.main``): its exit code, stdout and stderr
    as ``run_cli`` gives them (an uncaught exception: exit 1 with the traceback on stderr). The
    environment and working directory are put back after."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    env, here = dict(os.environ), os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    with _fd_captured(1) as fd_out, _fd_captured(2) as fd_err:
        try:
            os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(args))
                except SystemExit as exc:  # argparse: --help, usage errors
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            os.chdir(here)
            os.environ.clear()
            os.environ.update(env)
        captured_out, captured_err = fd_out(), fd_err()
    return subprocess.CompletedProcess(
        ["parscale", *args], code, out.getvalue() + captured_out, err.getvalue() + captured_err
    )
