"""Load a job config: YAML files with ``base:`` inheritance, dotted command-line overrides, typed
validation, and an error for every problem that names the file and line (or the override) and the
dotted key it concerns."""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, Problem, dotted
from .job import JobConfig, cross_section_problems
from .schema_walk import allowed_keys, default_at

BASE_KEY = "base"
Path_ = tuple  # a key path: ("data", "sources", 0, "path")


@dataclass
class LoadedConfig:
    """A validated config and the record of how it was put together."""

    config: JobConfig
    files: list[str]  # the file given first, then the bases it pulled in
    overrides: list[str]
    origin: dict[Path_, str] = field(repr=False, default_factory=dict)

    def where(self, key: str | Path_) -> str:
        """file:line (or the override) that set a dotted key, or its nearest parent."""
        return _lookup_origin(self.origin, _split_key(key) if isinstance(key, str) else key, self.files[0])

    def require(self, *sections: str, by: str) -> None:
        """Refuse a config that lacks a section the command ``by`` needs, naming the key."""
        for section in sections:
            if getattr(self.config, section) is None:
                raise self.error(section, f"required by '{by}' but missing")

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError about one key, found after loading (e.g. against the world size)."""
        return ConfigError(self.files[0], [Problem(self.where(key), key, message)])

    def derive(self, label: str, updates: dict[str, Any]) -> LoadedConfig:
        """This config with ``updates`` (dotted key -> value or config section) applied in code and
        validated once: how a job derives the config of each of its runs. The updates are kept as
        ``--set`` lines of provenance (the resolved config written beside the run lists them), and
        an error in one names ``label`` and the key."""
        source = self.files[0]
        data = self.config.model_dump(mode="json", exclude_unset=True)
        origin, overrides = dict(self.origin), list(self.overrides)
        for key, value in updates.items():
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            text = f"{key}={json.dumps(value)}"
            _apply_override(data, origin, _split_key(key), value, text, source)
            origin[_split_key(key)] = label
            overrides.append(text)
        return LoadedConfig(_validated(data, origin, source), self.files, overrides, origin)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> LoadedConfig:
    """Read ``path`` (and its bases), apply ``--set`` style overrides, validate."""
    source = str(path)
    data, origin, files = _load_chain(Path(path), chain=())
    for text in overrides:
        key, value = parse_override(text, source)
        _apply_override(data, origin, key, value, text, source)
    return LoadedConfig(_validated(data, origin, source), files, list(overrides), origin)


def _validated(data: dict, origin: dict[Path_, str], source: str) -> JobConfig:
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, _problems_from(exc, data, origin, source)) from None
    problems = [Problem(_lookup_origin(origin, _split_key(k), source), k, m) for k, m in cross_section_problems(config)]
    if problems:
        raise ConfigError(source, problems)
    return config


# ---------------------------------------------------------------- files and inheritance


def _read_yaml(path: Path) -> tuple[dict, dict[Path_, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [Problem(str(path), "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [Problem(str(path), "", f"cannot read: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [Problem(where, "", f"not valid YAML: {reason}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path), [Problem(f"{path}:1", "", f"expected a mapping of sections, got {type(data).__name__}")]
        )
    lines: dict[Path_, str] = {}
    _record_lines(node, (), path, lines)
    return data, lines


def _record_lines(node: yaml.Node | None, prefix: Path_, path: Path, out: dict[Path_, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            out[key] = f"{path}:{key_node.start_mark.line + 1}"
            _record_lines(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = f"{path}:{item.start_mark.line + 1}"
            _record_lines(item, prefix + (i,), path, out)


def _load_chain(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[Path_, str], list[str]]:
    """The file merged over its bases (in order, later bases win), with key origins."""
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in chain + (resolved,))
        raise ConfigError(str(chain[0]), [Problem(str(path), BASE_KEY, f"inheritance cycle: {loop}")])
    data, lines = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data, lines, [str(path)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(str(path), [Problem(lines[(BASE_KEY,)], BASE_KEY, "expected a file path or a list of them")])
    merged: dict = {}
    origin: dict[Path_, str] = {}
    files: list[str] = [str(path)]
    for i, base in enumerate(bases):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            where = lines.get((BASE_KEY, i), lines[(BASE_KEY,)])
            raise ConfigError(str(path), [Problem(where, BASE_KEY, f"base file not found: {base_path}")])
        base_data, base_origin, base_files = _load_chain(base_path, chain + (resolved,))
        _merge(merged, origin, base_data, base_origin)
        files += base_files
    _merge(merged, origin, data, {k: v for k, v in lines.items() if k[:1] != (BASE_KEY,)})
    return merged, origin, files


def _merge(dst: dict, dst_origin: dict, src: dict, src_origin: dict, prefix: Path_ = ()) -> None:
    """Deep-merge src into dst: mappings merge key by key; anything else replaces."""
    for key, value in src.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            if path in src_origin:
                dst_origin[path] = src_origin[path]
            _merge(dst[key], dst_origin, value, src_origin, path)
            continue
        dst[key] = copy.deepcopy(value)
        _forget(dst_origin, path)
        dst_origin.update({k: v for k, v in src_origin.items() if k[: len(path)] == path})


def _forget(origin: dict, path: Path_) -> None:
    for key in [k for k in origin if k[: len(path)] == path]:
        del origin[key]


# ---------------------------------------------------------------- overrides

_INDEX = re.compile(r"\[(\d+)\]")


def _split_key(key: str) -> Path_:
    """'data.sources[0].path' or 'data.sources.0.path' -> ('data', 'sources', 0, 'path')."""
    parts: list[Any] = []
    for piece in _INDEX.sub(r".\1", key).split("."):
        if piece == "":
            raise ValueError(f"empty component in key {key!r}")
        parts.append(int(piece) if piece.isdigit() else piece)
    return tuple(parts)


def value_at(data: Any, key: str) -> Any:
    """The value at a dotted key ('parallel.tensor_parallel_size', 'data.sources[0].path') of plain data."""
    node = data
    for part in _split_key(key):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            raise KeyError(key) from None
    return node


def parse_override(text: str, source: str = "<command line>") -> tuple[Path_, Any]:
    """'model.hidden_size=512' -> (('model', 'hidden_size'), 512). The value is read as YAML."""
    where = f"--set {text}"
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(source, [Problem(where, "", "expected KEY=VALUE, e.g. model.hidden_size=512")])
    try:
        path = _split_key(key.strip())
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(source, [Problem(where, key, f"cannot parse: {exc}")]) from None
    return path, value


def _apply_override(data: dict, origin: dict, path: Path_, value: Any, text: str, source: str) -> None:
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        here = dotted(path[: depth + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(
                    source, [Problem(f"--set {text}", here, f"no list item {part} (the list has {len(node)})")]
                )
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(source, [Problem(f"--set {text}", here, "cannot set a key inside a non-mapping value")])
        if part not in node:  # reach into a default the files never wrote (e.g. the default source list)
            default = default_at(JobConfig, path[: depth + 1], data)
            node[part] = default if isinstance(default, (dict, list)) else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(
                source, [Problem(f"--set {text}", dotted(path), f"no list item {last} (the list has {len(node)})")]
            )
    elif not isinstance(node, dict):
        raise ConfigError(
            source, [Problem(f"--set {text}", dotted(path), "cannot set a key inside a non-mapping value")]
        )
    node[last] = value
    _forget(origin, path)
    origin[path] = f"--set {text}"


# ---------------------------------------------------------------- validation errors


def _lookup_origin(origin: dict[Path_, str], path: Path_, fallback: str) -> str:
    for n in range(len(path), 0, -1):
        if path[:n] in origin:
            return origin[path[:n]]
    return fallback


def _clean_loc(loc: Iterable, data: Any) -> Path_:
    """Drop the discriminator tags pydantic puts in a location: ('data','sources',0,'jsonl','path')
    -> ('data','sources',0,'path')."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _problems_from(exc: ValidationError, data: dict, origin: dict, source: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = _clean_loc(err["loc"], data)
        where = _lookup_origin(origin, loc, source)
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = allowed_keys(JobConfig, loc[:-1], data)
            message = "unknown key"
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            if near:
                message += f"; did you mean '{near[0]}'?"
            if allowed:
                message += f" (expected one of: {', '.join(allowed)})"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f" (got {err['input']!r})"
        problems.append(Problem(where, dotted(loc), message))
    return sorted(problems, key=_reading_order)


def _reading_order(problem: Problem) -> tuple:
    """Files in the order given, lines top to bottom, command-line overrides last."""
    name, _, line = problem.where.rpartition(":")
    if problem.where.startswith("--set") or not line.isdigit():
        return (1, problem.where, 0)
    return (0, name, int(line))
