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


def task_manager(include_path: Sequence[str] = ()):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *map(str, include_path)], verbosity="ERROR")


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

    manager = task_manager(include_path)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise TaskError(
            f"unknown task(s) {', '.join(unknown)}: lm-eval knows its own tasks, the project's "
            f"({', '.join(SMOKE_TASKS)}, in {TASKS_DIR}) and those under --include-path"
        )
    with offline():
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )


def headline(results: dict) -> dict[str, float]:
    """``task/metric`` -> value for every numeric metric of every task (stderr left out)."""
    flat = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric = key.split(",")[0]
            if "stderr" in metric or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            flat[f"{task}/{metric}"] = float(value)
    return flat


__all__ = ["SMOKE_TASKS", "TASKS_DIR", "TaskError", "evaluate_tasks", "headline", "offline", "task_manager"]
