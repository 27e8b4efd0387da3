"""The suite runs on the CPU also on a GPU machine: tests/conftest.py hides every GPU
(``CUDA_VISIBLE_DEVICES=""``) before anything initialises CUDA, for this process and every process
it starts, unless ``PARSCALE_TEST_GPU=1`` asks to let the suite see them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

PROBE = "import os, torch; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), torch.cuda.is_available())"


@pytest.mark.skipif(os.environ.get("PARSCALE_TEST_GPU") == "1", reason="opted in: the suite sees the GPUs")
def test_no_gpu_is_visible_to_the_suite_or_its_subprocesses():
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available() and torch.cuda.device_count() == 0
    child = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["''", "False"]
