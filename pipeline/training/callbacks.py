"""What a run does besides its steps, one callback per action: logging, evaluation (with the stream
diagnostics), checkpoints, the stop agreement, the non-finite guard, the portable export and, with
``eval.tasks``, downstream tasks. The trainer calls each, in list order, at the start, after every
step and at the end; another action is one more callback appended to ``default_callbacks(cfg)``.

Reading the losses waits for the device, so the trainer reads them only at a step where some
callback ``reads_losses`` (and at an agreed stop): the losses of every step since the last read
come back in one transfer."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Protocol

from ..config.job import JobConfig, in_training_tasks_problem
from ..distributed import ParallelContext
from ..errors import UserError
from ..utils import collectives
from .downstream_eval import DownstreamTasks, console_line
from .metrics import MetricsSink
from .progress import Progress
from .run_data import RunData


class Run(Protocol):
    """What a callback sees of the run (``loop.Trainer``)."""

    ctx: ParallelContext
    step: int  # the steps done
    skipped: int  # of those, the non-finite ones (as of the last read of the losses)
    nonfinite_peak: int  # the most non-finite steps in a row so far
    stop: threading.Event  # set on this rank by a stop signal or request
    stop_agreed: bool  # every rank stops after this step
    progress: Progress
    sink: MetricsSink  # the metrics file (and wandb) on rank 0; does nothing elsewhere
    results: dict  # what the run reports at its end, besides its step, loss and skipped count
    engine: object  # the DeepSpeed engine: ``engine.module`` is the model
    data: RunData

    @property
    def total_steps(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    @property
    def tokens_per_step(self) -> int: ...

    @property
    def ckpt_dir(self) -> Path: ...

    def resolve(self) -> None:
        """Read the losses of the steps since the last read (one device transfer)."""

    def last_record(self) -> dict:
        """The metrics record of the last step whose loss was read."""

    def evaluate(self) -> dict | None: ...

    def save(self) -> Path: ...

    def export_portable(self) -> Path: ...


class Callback:
    """An action of the run. Each hook does nothing unless overridden."""

    def reads_losses(self, trainer: Run, step: int) -> bool:
        """Whether ``on_step_end`` at ``step`` needs the steps' losses read from the device."""
        return False

    def on_train_start(self, trainer: Run) -> None:
        """Before the first step of this process (``trainer.step`` > 0 after a resume)."""

    def on_step_end(self, trainer: Run, step: int) -> None:
        """After step ``step``, once the losses are read if any callback reads them there."""

    def on_train_end(self, trainer: Run) -> None:
        """The run ends: its budget spent, or a stop agreed (``trainer.stop_agreed``)."""


class StopRequests(Callback):
    """A stop asked on any rank, by a stop signal (the trainer's ``stop`` event) or by
    ``checkpoint.stop_file`` appearing, is agreed by every rank one step later (asynchronously, over
    gloo); the run then saves and ends at that step. The stop file is removed when acted on, so the
    rerun that resumes does not stop at once."""

    def __init__(self, stop_file: str | None, exit_at_step: int | None = None):
        self.stop_file = stop_file
        self.exit_at_step = exit_at_step  # known to every rank: stops there with no agreement needed
        self.agreement: collectives.Agreement | None = None

    def on_train_start(self, trainer: Run) -> None:
        self.agreement = collectives.Agreement()

    def _wanted_here(self, trainer: Run) -> bool:
        if self.stop_file and not trainer.stop.is_set() and Path(self.stop_file).exists():
            trainer.stop.set()
            print(f"rank {trainer.ctx.rank}: {self.stop_file} appeared: saving and stopping", flush=True)
        return trainer.stop.is_set()

    def on_step_end(self, trainer: Run, step: int) -> None:
        trainer.stop_agreed = self.agreement.post(self._wanted_here(trainer))
        if step == self.exit_at_step and step < trainer.total_steps:
            trainer.stop_agreed = True
            if trainer.ctx.is_main:
                print(f"checkpoint.exit_at_step: {step} reached: saving and stopping", flush=True)
        if trainer.stop_agreed:
            trainer.resolve()  # the stop's checkpoint, and the non-finite guard before it, see every step

    def settle(self) -> None:
        """Wait for the agreement in flight (before a save or an exit)."""
        self.agreement.result()

    def on_train_end(self, trainer: Run) -> None:
        self.settle()
        if not trainer.stop_agreed:
            return
        if self.stop_file:
            Path(self.stop_file).unlink(missing_ok=True)
        if trainer.ctx.is_main:
            print(f"stop requested: saved step {trainer.step} in {trainer.ckpt_dir}; rerun to resume", flush=True)


class Logging(Callback):
    """Every ``every`` steps and at the last: the window's losses, throughput and ETA (console and
    metrics file)."""

    def __init__(self, every: int):
        self.every = every

    def reads_losses(self, trainer: Run, step: int) -> bool:
        return step % self.every == 0 or step == trainer.total_steps

    def on_train_start(self, trainer: Run) -> None:
        trainer.progress.start(trainer.step)

    def on_step_end(self, trainer: Run, step: int) -> None:
        if self.reads_losses(trainer, step):
            trainer.progress.log_step(trainer.last_record(), step, trainer.skipped)


class NonfiniteGuard(Callback):
    """``limit`` non-finite steps in a row (each skipped, as counted when the losses are read) end
    the run with an error, after a checkpoint of where it stands."""

    def __init__(self, limit: int, stops: StopRequests):
        self.limit, self.stops = limit, stops

    def on_step_end(self, trainer: Run, step: int) -> None:
        if trainer.nonfinite_peak >= self.limit:
            self.stops.settle()
            trainer.save()
            raise UserError(
                f"{trainer.nonfinite_peak} non-finite steps in a row (train.max_nonfinite_in_a_row="
                f"{self.limit}); saved step {step} in {trainer.ckpt_dir}; lower optimizer.lr or check the data"
            )


class Evaluation(Callback):
    """The validation loss and stream diagnostics every ``every`` steps (0: none on the way) and at
    the end of a run that spent its budget; the last is the run's ``val``."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer: Run, step: int) -> None:
        if self.every and step % self.every == 0 and step < trainer.total_steps:
            self._log(trainer)

    def on_train_end(self, trainer: Run) -> None:
        if not trainer.stop_agreed:
            trainer.results["val"] = self._log(trainer)

    @staticmethod
    def _log(trainer: Run) -> dict | None:
        result = trainer.evaluate()
        if result is not None:
            trainer.progress.log_eval(result, trainer.step, warn=trainer.ctx.is_main)
        return result


class Checkpointing(Callback):
    """A checkpoint every ``every`` steps, at an agreed stop, and at the end unless the last step
    was just saved."""

    def __init__(self, every: int):
        self.every = every
        self.saved_at = 0

    def reads_losses(self, trainer: Run, step: int) -> bool:
        return step % self.every == 0

    def on_train_start(self, trainer: Run) -> None:
        self.saved_at = trainer.step

    def on_step_end(self, trainer: Run, step: int) -> None:
        if step % self.every == 0 or trainer.stop_agreed:
            trainer.save()
            self.saved_at = step

    def on_train_end(self, trainer: Run) -> None:
        if not trainer.stop_agreed and self.saved_at != trainer.step:
            trainer.save()


class PortableExport(Callback):
    """The full weights as a portable checkpoint at the end of a run that spent its budget (a bf16
    run: its fp32 master weights, equal to what ``parscale convert consolidate`` makes of its last
    checkpoint, not the bf16 copies the forward pass uses)."""

    def on_train_end(self, trainer: Run) -> None:
        if not trainer.stop_agreed:
            trainer.results["portable"] = str(trainer.export_portable())


class DownstreamEval(Callback):
    """``eval.tasks`` (lm-evaluation-harness) on the live model every ``eval.tasks_interval_steps``
    steps (None: every ``eval.interval_steps``; 0: none on the way) and at the end of a run that
    spent its budget (the last is the run's ``downstream``). Rank 0 scores them in its own process
    (TP 1, ZeRO < 3: a run of another layout trains without them, and says so) while the other ranks wait at a barrier, so a
    run of the tasks must end within the process groups' timeout (30 minutes): ``eval.tasks_limit``
    bounds it. Each run is a ``downstream`` metrics record (step, tokens_seen, seconds, one key per
    task/metric) and a console line. Acting after the checkpoint of its step, a failure loses no
    training; the task names are checked at the start, before any step."""

    def __init__(self, cfg: JobConfig):
        self.cfg, self.every = cfg.eval, cfg.eval.tasks_every
        #: why this run cannot score its model in one process (then it trains without the tasks)
        self.skipped = in_training_tasks_problem(cfg)
        self.tasks: DownstreamTasks | None = None

    def on_train_start(self, trainer: Run) -> None:
        if self.skipped:  # on every rank alike: none waits at a barrier for the others
            if trainer.ctx.is_main:
                print(
                    f"warning: eval.tasks ({', '.join(self.cfg.tasks)}) do not run inside this training run: "
                    f"{self.skipped}; the main job's evaluation and `parscale eval <export> --tasks ...` run "
                    "them on the export",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if trainer.ctx.is_main:
            spec = trainer.data.spec
            self.tasks = DownstreamTasks(self.cfg, spec.path, spec.tokenizer, trainer.seq_len)
            self.tasks.check()

    def on_step_end(self, trainer: Run, step: int) -> None:
        if not self.skipped and self.every and step % self.every == 0 and step < trainer.total_steps:
            self._run(trainer)

    def on_train_end(self, trainer: Run) -> None:
        if not self.skipped and not trainer.stop_agreed:
            trainer.results["downstream"] = self._run(trainer)

    def _run(self, trainer: Run) -> dict | None:
        """The metrics of this step (rank 0; None on the others, once rank 0 is done)."""
        metrics = None
        if self.tasks is not None:
            record = self.tasks.record(trainer.engine.module, trainer.step, trainer.step * trainer.tokens_per_step)
            trainer.sink.log(record, console=console_line(record))
            metrics = {k: v for k, v in record.items() if "/" in k}
        collectives.barrier()
        return metrics


def default_callbacks(cfg: JobConfig) -> list[Callback]:
    """The actions of every run, in the order they act at a step (downstream tasks, when
    ``eval.tasks`` names any, last: after the step's checkpoint and the final export)."""
    stops = StopRequests(cfg.checkpoint.stop_file, cfg.checkpoint.exit_at_step)
    callbacks = [
        stops,
        Logging(cfg.logging.interval_steps),
        NonfiniteGuard(cfg.train.max_nonfinite_in_a_row, stops),
        Evaluation(cfg.eval.interval_steps),
        Checkpointing(cfg.checkpoint.interval_steps),
        PortableExport(),
    ]
    return callbacks + ([DownstreamEval(cfg)] if cfg.eval.tasks else [])
