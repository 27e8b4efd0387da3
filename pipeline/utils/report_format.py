"""The Markdown every report writer shares: tables, numbers that may be missing, sections of blocks
separated by blank lines, and the report's files written whole (a reader never sees half a report).
A writer then only says what goes in its report."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from .fs import atomic_write_text

#: a paragraph, or lines kept together (a table, a list); None or no lines: left out
Block = str | Sequence[str] | None


def config_line(path: str, overrides: Sequence[str]) -> str:
    """'Config: `path` with `--set ...`': how a report's numbers were made."""
    return f"Config: `{path}`" + (f" with `--set {' '.join(overrides)}`" if overrides else "")


def number(value: float | None, spec: str = "{:.4f}", missing: str = "n/a") -> str:
    """``value`` formatted by ``spec``, or ``missing`` where there is none (a diagnostic an older
    evaluation lacks, a spread over one seed)."""
    return missing if value is None else spec.format(value)


def with_delta(value: float, base: float) -> str:
    """'5.9577 (-0.0044)': a loss with its difference to ``base`` in brackets."""
    return f"{value:.4f} ({value - base:+.4f})"


def table(head: str | Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table: the header, the rule, a line per row. ``head``: the column titles, or one
    string of them separated by ``" | "`` as the header reads. A blank header cell (the corner above
    a column of row names) is written ``| |``, a blank body cell ``|  |``: as the reports in
    docs/results have them."""
    if isinstance(head, str):
        head = head.split(" | ")
    top = "|" + "".join(f" {cell} |" if cell else " |" for cell in head)
    return [top, "|" + "---|" * len(head), *("| " + " | ".join(row) + " |" for row in rows)]


def section(heading: str, *blocks: Block, level: int = 2) -> list[str]:
    """The heading (``level`` 1: the report's title), then each block with a blank line after it."""
    lines = ["#" * level + " " + heading, ""]
    for block in blocks:
        if block:
            lines += [block, ""] if isinstance(block, str) else [*block, ""]
    return lines


def write_markdown(path: Path, lines: Sequence[str]) -> Path:
    return atomic_write_text(path, "\n".join(lines))


def write_json(path: Path, data: dict) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2))


__all__ = ["Block", "config_line", "number", "section", "table", "with_delta", "write_json", "write_markdown"]
