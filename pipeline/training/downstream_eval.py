"""Downstream tasks of lm-evaluation-harness on the model being trained (``eval.tasks``): the live
model (the DeepSpeed engine's module, whole in this process: TP 1, ZeRO 0-2) is scored in eval mode
without gradients, with the data's tokenizer and end-of-document id and the run's sequence length
as context, and put back in train mode after. lm-eval seeds Python's, NumPy's and torch's global
generators; their states are put back too, so a run trains the same with or without its tasks.
The ``DownstreamEval`` callback (``callbacks.py``) says when, and makes the other ranks wait;
``evaluate_portable_tasks`` runs the same tasks on a portable checkpoint (the main job's final
models)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from data_prep.text_tokenizer import TextTokenizer
from data_prep.tokenizer import TokenizerInfo, open_recorded

from ..checkpoint.portable import load_tokenizer
from ..config.training import EvalConfig
from ..distributed import preferred_device, single_process
from ..downstream.run_tasks import TaskError, evaluate_tasks, headline, task_manager
from ..downstream.scorer import Scorer
from ..errors import UserError
from ..utils.report_format import number

#: the kind of a downstream record in the metrics file
KIND = "downstream"


@contextlib.contextmanager
def kept_rng_state() -> Iterator[None]:
    """Python's, NumPy's and torch's (the CPU's and this rank's CUDA device's) global generator
    states, as they were before the block, put back after it."""
    python, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []  # the one this rank uses
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


class DownstreamTasks:
    """``eval``'s tasks, as a run of them on a model of ``seq_len`` tokens of context with the
    tokenizer recorded in the prepared data at ``data_path``."""

    def __init__(self, eval_cfg: EvalConfig, data_path: Path, tokenizer: TokenizerInfo, seq_len: int):
        self.cfg, self.data_path, self.info, self.seq_len = eval_cfg, Path(data_path), tokenizer, seq_len
        self._tokenizer: TextTokenizer | None = None

    def check(self) -> None:
        """Every task is one lm-eval finds (before training, not after it): else a ``UserError``
        naming ``eval.tasks``."""
        try:
            task_manager(self.cfg.tasks, self.cfg.tasks_include_path)
        except TaskError as exc:
            raise UserError(f"eval.tasks: {exc}") from None

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = open_recorded(self.data_path, self.info)
        return self._tokenizer

    def run(self, module: torch.nn.Module) -> dict[str, float]:
        """``task/metric`` -> value of ``module`` (left in the train/eval mode it was in, and every
        global generator as it was)."""
        from ..downstream.harness_model import HarnessLM  # imports lm-eval

        was_training = module.training
        tokenizer = self.tokenizer
        try:
            with kept_rng_state(), torch.no_grad():
                module.eval()
                scorer = Scorer(module, tokenizer.eos_id, self.seq_len, self.cfg.tasks_batch_size)
                results = evaluate_tasks(
                    HarnessLM(scorer=scorer, tokenizer=tokenizer),
                    self.cfg.tasks,
                    num_fewshot=self.cfg.tasks_num_fewshot,
                    limit=self.cfg.tasks_limit,
                    include_path=self.cfg.tasks_include_path,
                )
        finally:
            module.train(was_training)
        return headline(results)

    def record(self, module: torch.nn.Module, step: int, tokens_seen: int) -> dict:
        """The metrics record of a run of the tasks at ``step``: kind, step, tokens_seen, seconds and
        one key per task/metric."""
        start = time.perf_counter()
        metrics = self.run(module)
        seconds = time.perf_counter() - start
        return {"kind": KIND, "step": step, "tokens_seen": tokens_seen, "seconds": seconds, **metrics}


def task_settings(eval_cfg: EvalConfig) -> dict | None:
    """What decides a run's numbers besides the model (None: no tasks)."""
    if not eval_cfg.tasks:
        return None
    return {
        "tasks": list(eval_cfg.tasks),
        "limit": eval_cfg.tasks_limit,
        "num_fewshot": eval_cfg.tasks_num_fewshot,
        "include_path": list(eval_cfg.tasks_include_path),
    }


def evaluate_portable_tasks(checkpoint: str | Path, eval_cfg: EvalConfig, seed: int = 1234) -> dict:
    """``eval.tasks`` on a portable checkpoint in this process (a world of one, on its device), with
    the checkpoint's tokenizer and trained sequence length: ``{"settings", "metrics": {task/metric:
    value}, "seconds"}``."""
    from ..downstream.harness_model import HarnessLM, open_scorer  # imports lm-eval

    start = time.perf_counter()
    with single_process(seed=seed, device=preferred_device()) as ctx:
        scorer = open_scorer(str(checkpoint), ctx.device, eval_cfg.tasks_batch_size)
        results = evaluate_tasks(
            HarnessLM(scorer=scorer, tokenizer=load_tokenizer(checkpoint)),
            eval_cfg.tasks,
            num_fewshot=eval_cfg.tasks_num_fewshot,
            limit=eval_cfg.tasks_limit,
            include_path=eval_cfg.tasks_include_path,
        )
    return {"settings": task_settings(eval_cfg), "metrics": headline(results), "seconds": time.perf_counter() - start}


def console_line(record: dict) -> str:
    """'downstream step 200 | parscale_mc acc 0.5200 | ... | 3.1 s': each task's first metric (its
    main figure; every metric is in the record)."""
    firsts: dict[str, str] = {}
    for key, value in record.items():
        task, slash, metric = key.partition("/")
        if slash and task not in firsts:
            firsts[task] = f"{task} {metric} {number(value)}"
    return " | ".join([f"downstream step {record['step']}", *firsts.values(), f"{record['seconds']:.1f} s"])


__all__ = ["KIND", "DownstreamTasks", "console_line", "evaluate_portable_tasks", "kept_rng_state", "task_settings"]
