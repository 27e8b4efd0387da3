"""ConfigError: every problem in a job config, each with where it came from (file:line or the
command-line override) and the dotted key it concerns."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import JobError


@dataclass(frozen=True)
class Problem:
    where: str  # "configs/demo.yaml:12", "--set model.hidden_size=512" or a file name
    key: str  # dotted path, list items as [i]: "data.sources[0].path"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}" if self.key else f"{self.where}: {self.message}"


class ConfigError(JobError):
    """Raised for any invalid job config; str() lists every problem found, one per line."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"invalid config {source} ({len(problems)} {noun}):"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


def dotted(path: tuple) -> str:
    """('data', 'sources', 0, 'path') -> 'data.sources[0].path'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
