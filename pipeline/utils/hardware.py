"""One line naming the machine a result was measured on (reports print it beside their figures)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        return (
            f"{torch.cuda.get_device_name()}, decoding in bf16, torch {torch.__version__} (CUDA {torch.version.cuda})"
        )
    return f"CPU ({cpu}), {torch.get_num_threads()} torch threads, fp32, torch {torch.__version__}"
