"""ConfigError: every problem in a job config, each with where it came from (file:line or the
command-line override) and the dotted key it concerns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class Problem:
    where: str  # "configs/demo.yaml:12", "--set model.hidden_size=512" or a file name
    key: str  # dotted path, list items as [i]: "data.sources[0].path"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}" if self.key else f"{self.where}: {self.message}"


class ConfigError(UserError):
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


#: how code that checks a config against the world (data, world size, checkpoints) raises: the
#: dotted key and the message in, an error naming where the key was set out (``LoadedConfig.error``)
ErrorAt = Callable[[str, str], ConfigError]


def key_error(key: str, message: str) -> ConfigError:
    """The ErrorAt of a config built in code: there is no file to point into, so only the key."""
    return ConfigError("(built in code)", [Problem("config", key, message)])
