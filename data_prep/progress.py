"""Console output of a prep job: a progress bar per phase (bytes, tokens/s, ETA) and the summary
table at the end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


class Reporter:
    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled

    @contextlib.contextmanager
    def phase(self, label: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.enabled:
            self.console.print(f"{label} ...")
        yield
        if self.enabled:
            self.console.print(f"{label}: done in {time.perf_counter() - start:.1f}s")

    @contextlib.contextmanager
    def bar(self, label: str, total: int, done: int = 0) -> Iterator[Callable[..., None]]:
        with self.bars((label, total, done)) as (advance,):
            yield advance

    @contextlib.contextmanager
    def bars(self, *specs: tuple[str, int, int]) -> Iterator[list[Callable[..., None]]]:
        """One bar per (label, total, done), shown together (phases that run at the same time);
        yields an ``advance(n, tokens=0)`` per bar."""
        if not self.enabled:
            yield [lambda n, tokens=0: None for _ in specs]
            return
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as progress:
            yield [
                self._advance(progress, progress.add_task(label, total=max(total, 1), completed=done, rate=""))
                for label, total, done in specs
            ]

    @staticmethod
    def _advance(progress: Progress, task) -> Callable[..., None]:
        state = {"tokens": 0, "start": time.perf_counter()}

        def advance(n: int, tokens: int = 0) -> None:
            state["tokens"] += tokens
            if not state["tokens"]:
                progress.update(task, advance=n)
                return
            seconds = max(1e-9, time.perf_counter() - state["start"])
            rate = f"{state['tokens'] / 1e6:.2f}M tok, {state['tokens'] / seconds / 1e6:.2f}M tok/s"
            progress.update(task, advance=n, rate=rate)

        return advance

    def summary(self, manifest: dict, seconds: float, out) -> None:
        if not self.enabled:
            return
        table = Table(title=f"prepared data in {out} ({seconds:.1f}s)")
        for col in ("source", "docs read/kept", "rejected", "train tokens", "rows train/val", "padding", "cut docs"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for src in manifest["sources"]:
            tr, va = src["splits"]["train"], src["splits"]["val"]
            docs = src["documents"]
            table.add_row(
                src["name"],
                f"{docs['read']:,}/{docs['kept']:,}",
                f"{docs['rejected']:,}",
                f"{tr['tokens']:,}",
                f"{tr['rows']:,}/{va['rows']:,}",
                f"{tr['padding_fraction']:.2%}",
                f"{tr['truncated_documents'] + va['truncated_documents']:,}",
            )
        self.console.print(table)
        reasons = manifest["totals"]["rejected_by_reason"]
        if reasons:
            self.console.print(
                "rejected: "
                + ", ".join(f"{r} {n}" for r, n in reasons.items())
                + " (first examples per reason in manifest.json)"
            )
        for name, n in manifest["totals"].get("stripped_by_filter", {}).items():
            self.console.print(
                f"{name}: stripped from {n:,} kept documents (data.{name}: strip; first examples in manifest.json)"
            )
