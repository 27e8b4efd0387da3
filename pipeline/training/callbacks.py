"""What a run does besides its steps, one callback per action: logging, evaluation (with the stream
diagnostics), checkpoints, the stop agreement, the non-finite guard and the portable export. The
trainer calls each, in list order, at the start, after every step and at the end; another action
(a downstream evaluation, say) is one more callback appended to ``default_callbacks(cfg)``.

Reading the losses waits for the device, so the trainer reads them only at a step where some
callback ``reads_losses`` (and at an agreed stop): the losses of every step since the last read
come back in one transfer."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from ..config.job import JobConfig
from ..distributed import ParallelContext
from ..errors import UserError
from ..utils import collectives
from .progress import Progress


class Run(Protocol):
    """What a callback sees of the run (``loop.Trainer``)."""

    ctx: ParallelContext
    step: int  # the steps done
    skipped: int  # of those, the non-finite ones (as of the last read of the losses)
    nonfinite_peak: int  # the most non-finite steps in a row so far
    stop: threading.Event  # set on this rank by a stop signal or request
    stop_agreed: bool  # every rank stops after this step
    progress: Progress
    results: dict  # what the run reports at its end, besides its step, loss and skipped count

    @property
    def total_steps(self) -> int: ...

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

    def __init__(self, stop_file: str | None):
        self.stop_file = stop_file
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
    """The full weights as a portable checkpoint at the end of a run that spent its budget."""

    def on_train_end(self, trainer: Run) -> None:
        if not trainer.stop_agreed:
            trainer.results["portable"] = str(trainer.export_portable())


def default_callbacks(cfg: JobConfig) -> list[Callback]:
    """The actions of every run, in the order they act at a step."""
    stops = StopRequests(cfg.checkpoint.stop_file)
    return [
        stops,
        Logging(cfg.logging.interval_steps),
        NonfiniteGuard(cfg.train.max_nonfinite_in_a_row, stops),
        Evaluation(cfg.eval.interval_steps),
        Checkpointing(cfg.checkpoint.interval_steps),
        PortableExport(),
    ]
