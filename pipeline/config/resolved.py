"""The fully resolved config, written next to every output so a run can be reproduced with
``parscale <command> <dir>/config.resolved.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..utils.fs import atomic_write_text
from .loader import LoadedConfig

RESOLVED_NAME = "config.resolved.yaml"


def dump_resolved(loaded: LoadedConfig) -> str:
    header = ["# Fully resolved job config (every default filled in). Reproduce with this file alone."]
    header.append(f"# from: {' <- '.join(loaded.files)}")
    for text in loaded.overrides:
        header.append(f"# override: --set {text}")
    body = yaml.safe_dump(loaded.config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def write_resolved(loaded: LoadedConfig, directory: str | Path, name: str = RESOLVED_NAME) -> Path:
    """Atomically write the resolved config into ``directory`` (created if needed)."""
    return atomic_write_text(Path(directory) / name, dump_resolved(loaded))
