"""Typed job configs: schema (one module per concern), YAML loading with inheritance and
overrides, and the resolved copy written next to every output."""

from .errors import ConfigError, Problem
from .job import JobConfig, RunConfig
from .loader import LoadedConfig, load_config, parse_override
from .resolved import RESOLVED_NAME, dump_config, dump_resolved, write_resolved
from .run_paths import RunPaths

__all__ = [
    "ConfigError",
    "JobConfig",
    "LoadedConfig",
    "Problem",
    "RESOLVED_NAME",
    "RunConfig",
    "RunPaths",
    "dump_config",
    "dump_resolved",
    "load_config",
    "parse_override",
    "write_resolved",
]
