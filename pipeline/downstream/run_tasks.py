"""Run lm-evaluation-harness tasks on a model and keep what a report needs. The project's offline
smoke tasks (``tasks/``) are always findable; more task folders come from ``include_path``. Task
datasets are read from local files or the user's datasets cache: nothing is downloaded when
``HF_DATASETS_OFFLINE=1`` (set by ``offline()``, which the commands use)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import UserError
from ..utils.report_format import number, table

TASKS_DIR = Path(__file__).parent / "tasks"
#: the shipped tasks, one of each kind (a smoke check, not a benchmark)
SMOKE_TASKS = ("parscale_mc", "parscale_ppl", "parscale_gen")


class TaskError(UserError):
    """A task name lm-eval does not know (the message names it and where tasks are looked for)."""


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face datasets and hub stay local inside the block (unless the user set otherwise)."""
    keys = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    for key in keys:
        os.environ.setdefault(key, "1")
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)


def task_manager(tasks: Sequence[str], include_path: Sequence[str] = ()):
    """lm-eval's task index holding ``tasks``: the project's and ``include_path``'s tasks alone when
    they hold every one (indexing lm-eval's ~14,000 built-in task files takes 10-20 s), else with
    the built-in ones too; a name found in neither is a ``TaskError``."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *map(str, include_path)]
    for defaults in (False, True):
        manager = TaskManager(include_path=paths, include_defaults=defaults)
        unknown = [t for t in tasks if t not in set(manager.all_tasks)]
        if not unknown:
            return manager
    raise TaskError(
        f"unknown task(s) {', '.join(unknown)}: lm-eval knows its own tasks, the project's "
        f"({', '.join(SMOKE_TASKS)}, group parscale_smoke, in {TASKS_DIR}) and those under --include-path"
    )


def evaluate_tasks(
    lm,
    tasks: Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    include_path: Sequence[str] = (),
    seed: int = 1234,
) -> dict:
    """lm-eval's results (``simple_evaluate``) of ``lm`` (an lm-eval model) on ``tasks``."""
    import lm_eval

    manager = task_manager(tasks, include_path)
    with offline():
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=100,  # the stderr of the metrics that are not a plain mean
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )


def _is_metric(name: str, value) -> bool:
    """A metric's value in lm-eval's results (not its stderr, not the sample count)."""
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return numeric and "stderr" not in name and name != "sample_len"


def headline(results: dict) -> dict[str, float]:
    """``task/metric`` -> value for every numeric metric of every task (stderr left out)."""
    flat = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if not _is_metric(metric, value):
                continue
            flat[f"{task}/{metric}"] = float(value)
    return flat


def results_table(results: dict) -> list[str]:
    """A Markdown table of every task's metrics (lm-eval's own printer needs a newer pytablewriter
    than the one pinned with lm-eval's other dependencies)."""
    rows = []
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not _is_metric(metric, value):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            spread = number(stderr) if isinstance(stderr, int | float) else "n/a"
            rows.append([task, metric, filter_name, number(value), spread])
    return table(["task", "metric", "filter", "value", "stderr"], rows)


__all__ = [
    "SMOKE_TASKS",
    "TASKS_DIR",
    "TaskError",
    "evaluate_tasks",
    "headline",
    "offline",
    "results_table",
    "task_manager",
]
