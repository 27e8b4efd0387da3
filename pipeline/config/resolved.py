"""The fully resolved config, written next to every output so a run can be reproduced with
``parscale <command> <dir>/config.resolved.yaml``."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..utils.fs import atomic_write_text
from .job import JobConfig
from .loader import LoadedConfig
from .run_paths import RESOLVED_NAME


def dump_config(cfg: JobConfig, provenance: list[str] | None = None) -> str:
    """The whole config as YAML (every default filled in), under a header saying where it came from."""
    header = ["# Fully resolved job config (every default filled in). Reproduce with this file alone."]
    header += provenance if provenance is not None else ["# from: a config built in code"]
    body = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def dump_resolved(loaded: LoadedConfig) -> str:
    provenance = [f"# from: {' <- '.join(loaded.files)}"] + [f"# override: --set {t}" for t in loaded.overrides]
    return dump_config(loaded.config, provenance)


def write_resolved(loaded: LoadedConfig, directory: str | Path, name: str = RESOLVED_NAME) -> Path:
    """Atomically write the resolved config into ``directory`` (created if needed)."""
    return atomic_write_text(Path(directory) / name, dump_resolved(loaded))
