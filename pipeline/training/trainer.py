"""The training loop, one for both stages: DeepSpeed engine over the TP model, deterministic data
order, WSD schedule, non-finite steps skipped and counted, exact resume; what else a run does
(logging, evaluation, checkpoints, stops, the portable export) is its callbacks'. The caller owns
the process groups and the stop signals (``run.train``), so building a trainer changes neither."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import parallel_state as ps

from ..checkpoint.portable import save_portable_state
from ..checkpoint.sharding import gather_full_state
from ..config import LoadedConfig, dump_config, dump_resolved
from ..config.errors import ErrorAt, key_error
from ..config.job import JobConfig
from ..config.run_paths import RunPaths
from ..data.loader import Batch
from ..distributed import ParallelContext
from ..model import ParScaleLM
from ..model.counting import train_flops_per_token
from ..model.flex import choose_backend
from ..utils import collectives
from ..utils.fs import atomic_write_text
from . import checkpointing as ckpt
from .callbacks import Callback, default_callbacks
from .engine import build_engine, fp32_masters, set_lr, set_tf32
from .evaluation import PrefixDrift, Ranks, evaluate_model
from .memory_check import micro_batch_problem
from .metrics import MetricsSink
from .optim import apply_trainable
from .progress import Progress
from .restore import Restore, identity
from .run_data import RunData
from .schedule import WSD


@dataclass
class StepOutcome:
    """One optimizer step, kept on the device until a logging or checkpoint step reads it."""

    step: int
    lr: float
    loss: torch.Tensor  # this rank's mean loss over its micro-batches (device, fp32)
    applied: bool  # DeepSpeed applied the update; after resolve, also: the DP-mean loss was finite
    stream_weights: torch.Tensor | None  # [P] mean aggregation weights over real tokens (device)
    loss_value: float | None = None  # the DP-mean loss, set by resolve


@contextlib.contextmanager
def optimizer_step_skipped(optimizer):
    """Inside, ``optimizer.step`` does nothing: a skipped step moves neither the weights nor the
    optimizer's moments and step count."""
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del optimizer.step


def mean_stream_weights(out, batch: Batch) -> torch.Tensor | None:
    """[P] the merge weights averaged over the batch's real tokens (None for a dense model)."""
    if out.stream_weights is None:
        return None
    mask = batch.loss_mask[..., None]
    return (out.stream_weights.detach() * mask).sum((0, 1)) / mask.sum().clamp(min=1)


class Trainer:
    """A run of ``cfg`` in this process (one rank of a torchrun launch, or world size 1), in the
    process groups of ``ctx`` (``distributed_world``). ``stop``, set by a stop signal
    (``stop_signals``), saves and ends the run at the next step every rank agrees on.
    ``error_at(key, message)`` makes the errors about config keys found while building
    (``LoadedConfig.error`` names the file and line); ``resolved`` is the config text written
    beside the outputs and into every checkpoint; ``callbacks`` act after each step (by default
    ``default_callbacks(cfg)``)."""

    def __init__(
        self,
        cfg: JobConfig,
        ctx: ParallelContext,
        stop: threading.Event | None = None,
        *,
        error_at: ErrorAt = key_error,
        resolved: str | None = None,
        callbacks: Sequence[Callback] | None = None,
    ):
        for section in ("model", "train"):
            if getattr(cfg, section) is None:
                raise error_at(section, "required by 'train' but missing")
        stop_file = cfg.checkpoint.stop_file
        if stop_file and Path(stop_file).exists():  # would stop the run at once, then be deleted
            raise error_at(
                "checkpoint.stop_file",
                f"{stop_file} exists before the run started; it is the file whose appearance stops training "
                "(and is removed when acted on): remove it, or name a file that does not exist",
            )
        self.cfg, self.ctx, self.error_at, self.resolved = cfg, ctx, error_at, resolved or dump_config(cfg)
        self.dp, self.gas = self.ctx.dp_size, cfg.parallel.grad_accum_steps(self.ctx.dp_size)
        self.data = RunData.build(cfg, error_at)
        self.attention_backend = self._attention_backend()
        device = torch.device(self.ctx.device)
        if problem := micro_batch_problem(cfg, self.seq_len, self.vocab, self.attention_backend, device):
            raise error_at("packing.seq_len", problem)
        set_tf32(cfg.parallel.tf32, device)
        torch.manual_seed(cfg.run.seed)
        model = ParScaleLM(
            cfg.model,
            cfg.parscale,
            self.vocab,
            tp_rank=self.ctx.tp_rank,
            tp_size=self.ctx.tp_size,
            activation_checkpointing=cfg.parallel.activation_checkpointing,
        )
        model.attention_backend = self.attention_backend  # the preflight's choice, not the config's "auto"
        self.restore = Restore.find(cfg, identity(cfg, self.vocab, self.data.spec.tokenizer.sha256))
        self.restore.weights(model, cfg, self.ctx.tp_rank, self.data.init, error_at, self.ctx.is_main)
        self.trainable = apply_trainable(model, cfg.parscale)
        # the model goes in on the host: DeepSpeed casts a bf16 run's parameters there, then moves the model
        # to its device (see build_engine)
        self.engine = build_engine(model, cfg.parallel, cfg.optimizer, cfg.parscale, self.dp)
        self.schedule = WSD.build(cfg.schedule, cfg.optimizer.lr, self.total_steps, self.tokens_per_step)
        self.step, self.skipped, self.nonfinite_in_a_row, self.nonfinite_peak = 0, 0, 0, 0
        if self.restore.tag is not None:
            self.step, self.skipped = self.restore.engine_state(self.engine, self.ctx.is_main)
        self._pending: list[StepOutcome] = []  # steps whose losses are still on the device
        self.last: StepOutcome | None = None  # the last step whose loss was read
        self.sink = MetricsSink(cfg, enabled=self.ctx.is_main)
        flops = train_flops_per_token(cfg.model, cfg.parscale, model.padded_vocab_size, self.seq_len)
        self.progress = Progress(cfg, self.sink, self.total_steps, self.tokens_per_step, flops, self.ctx.world_size)
        self.ranks = Ranks(
            self.ctx.device,
            self.ctx.dp_rank,
            self.dp,
            ps.get_data_parallel_group(),
            ps.get_tensor_model_parallel_group(),
        )
        self.drift = PrefixDrift(cfg.parallel.zero_stage)  # prefixes as this process started, for update_cosine
        if cfg.parscale.streams > 1 and self.data.val is not None:
            self.drift(self.engine.module, self.ranks.tp_group)
        self.stop = stop if stop is not None else threading.Event()
        self.stop_agreed = False
        self.callbacks = list(default_callbacks(cfg) if callbacks is None else callbacks)
        self.results: dict = {}

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedConfig,
        ctx: ParallelContext,
        stop: threading.Event | None = None,
        callbacks: Sequence[Callback] | None = None,
    ) -> Trainer:
        """A trainer of a config read from YAML: its errors name the file and line."""
        return cls(loaded.config, ctx, stop, error_at=loaded.error, resolved=dump_resolved(loaded), callbacks=callbacks)

    # ------------------------------------------------------------------ what the data fixed

    @property
    def vocab(self) -> int:
        return self.data.vocab

    @property
    def seq_len(self) -> int:
        return self.data.spec.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.data.tokens_per_step

    @property
    def total_steps(self) -> int:
        return self.data.total_steps

    @property
    def ckpt_dir(self) -> Path:
        return self.restore.directory

    def _attention_backend(self) -> str:
        """The kernel masked training batches run on, checked before anything is built: on CUDA a
        preflight compile of flex; under ``auto`` a failure there (on any rank) means sdpa, with a
        warning, and a forced ``flex`` that fails is a config error."""
        precision = torch.bfloat16 if self.cfg.parallel.precision == "bf16" else torch.float32
        try:
            backend, warning = choose_backend(
                self.cfg.model.attention_backend, torch.device(self.ctx.device), precision, training=True
            )
        except ValueError as exc:
            raise self.error_at("model.attention_backend", str(exc)) from None
        fell_back = torch.tensor([float(warning is not None)])
        if self.ctx.world_size > 1 and collectives.all_reduce(fell_back, "max").item() and not warning:
            backend = "sdpa"  # every rank runs the same kernel
            warning = (
                "warning: model.attention_backend: auto uses sdpa: flex's preflight compile failed on another rank"
            )
        if warning and self.ctx.is_main:
            print(warning, file=sys.stderr, flush=True)
        return backend

    # ------------------------------------------------------------------ one step

    def _forward(self, batch: Batch, **extra):
        return self.engine(
            batch.input_ids, labels=batch.labels, loss_mask=batch.loss_mask, segment_ids=batch.segment_ids, **extra
        )

    def _finite_grads(self) -> bool:
        """Whether every rank's gradients are finite: one device-side reduction and one host read."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        bad = torch.zeros(1, device=self.ctx.device)
        if grads:
            bad = (~torch.stack([torch.isfinite(g).all() for g in grads]).all()).float().reshape(1)
        return collectives.all_reduce(bad, "max").item() == 0

    def train_step(self) -> StepOutcome:
        """One optimizer step over ``gas`` micro-batches. Nothing here waits for the device (no
        ``.item()``): the loss stays a device tensor until :meth:`resolve` reads a whole logging
        window at once. The one exception is ZeRO 0 in fp32, where DeepSpeed checks nothing and the
        non-finite guard must."""
        par = self.cfg.parallel
        lr = self.schedule(self.step)
        set_lr(self.engine, lr)
        guard = par.zero_stage == 0 and par.precision == "fp32"  # ZeRO >= 1 and bf16 skip non-finite steps themselves
        losses, weights, guarded_skip = [], [], False
        for micro in range(self.gas):
            batch = self.data.train_batch(self.cfg, self.step, micro, self.ctx.dp_rank, self.dp, self.ctx.device)
            out = self._forward(batch)
            self.engine.backward(out.loss)
            guarded_skip = guard and micro == self.gas - 1 and not self._finite_grads()
            with optimizer_step_skipped(self.engine.optimizer) if guarded_skip else contextlib.nullcontext():
                self.engine.step()  # DeepSpeed's bookkeeping advances and the gradients are cleared
            losses.append(out.loss.detach().float())
            weights.append(mean_stream_weights(out, batch))
        self.step += 1
        outcome = StepOutcome(
            self.step,
            lr,
            torch.stack(losses).mean(),
            self.engine.was_step_applied() and not guarded_skip,
            None if weights[0] is None else torch.stack(weights).mean(0),
        )
        self._pending.append(outcome)
        return outcome

    def resolve(self) -> None:
        """Read the pending steps' losses (one DP all-reduce, one host read) and count skipped steps:
        a step counts as applied when DeepSpeed applied it and its DP-mean loss is finite."""
        if not self._pending:
            return
        local = torch.stack([o.loss for o in self._pending])
        values = (collectives.all_reduce(local, "sum", self.ranks.dp_group) / self.dp).tolist()
        for outcome, loss in zip(self._pending, values, strict=True):
            outcome.loss_value = loss
            outcome.applied = outcome.applied and math.isfinite(loss)
            if outcome.applied:
                self.nonfinite_in_a_row = 0
            else:
                self.skipped += 1
                self.nonfinite_in_a_row += 1
                self.nonfinite_peak = max(self.nonfinite_peak, self.nonfinite_in_a_row)
            self.progress.add(loss)
        self.last = self._pending[-1]
        self._pending = []

    def last_record(self) -> dict:
        """The metrics record of the last step whose loss was read."""
        outcome = self.last
        norm = self.engine.get_global_grad_norm()
        record = {
            "step": outcome.step,
            "loss": outcome.loss_value,
            "lr": outcome.lr,
            "grad_norm": float(norm) if norm is not None else None,
            "skipped": self.skipped,
            "applied": outcome.applied,
        }
        if outcome.stream_weights is not None:
            mean = outcome.stream_weights.float()
            record["stream_weights"] = mean.tolist()
            record["stream_entropy"] = float(-(mean * mean.clamp(min=1e-12).log()).sum())
        return record

    # ------------------------------------------------------------------ eval, checkpoints

    def evaluate(self) -> dict | None:
        """The validation loss and stream diagnostics on every DP rank's share of the rows."""
        if self.data.val is None:
            return None
        self.engine.eval()
        result = evaluate_model(
            self.engine.module,
            lambda batch, states: self._forward(batch, return_stream_states=states),
            lambda start, count: self.data.batch(self.cfg, self.data.val, start, count, self.ctx.device),
            self.cfg,
            self.ranks,
            self.drift,
        )
        self.engine.train()
        return {"step": self.step, "tokens_seen": self.step * self.tokens_per_step, **result}

    def save(self) -> Path:
        self.resolve()  # the skipped count is part of the state
        state = {
            "step": self.step,
            "skipped": self.skipped,
            "consumed_samples": self.step * self.cfg.parallel.global_batch_size,
            "tokens_seen": self.step * self.tokens_per_step,
            "seq_len": self.seq_len,  # what the model was trained on: downstream evals' context length
            "identity": identity(self.cfg, self.vocab, self.data.spec.tokenizer.sha256),
        }
        return ckpt.save(self.engine, self.ckpt_dir, self.step, state, self.cfg.checkpoint.keep_last, self.resolved)

    def export_portable(self) -> Path:
        """Full weights (TP slices and ZeRO-3 partitions gathered) as a portable checkpoint. A bf16
        run exports its fp32 master weights (what ``parscale convert consolidate`` reads from its
        checkpoints), not the bf16-rounded module weights: ``train.init_from`` and ``parscale eval``
        of the export see what training holds."""
        import deepspeed

        masters = fp32_masters(self.engine) if self.cfg.parallel.precision == "bf16" else None
        params = list(self.engine.module.parameters())
        gather = (
            deepspeed.zero.GatheredParameters(params) if self.cfg.parallel.zero_stage == 3 else contextlib.nullcontext()
        )
        with gather:
            state = gather_full_state(self.engine.module, masters)
        if masters is not None:  # a frozen parameter has no master: its bf16 weight, as consolidate reads it
            state = {name: tensor.float() for name, tensor in state.items()}
        out = RunPaths.of(self.cfg).portable
        if self.ctx.is_main:
            save_portable_state(
                state,
                self.cfg.model,
                self.cfg.parscale,
                self.vocab,
                out,
                tokenizer=self.data.spec.path,
                meta={"step": self.step, "tokens_seen": self.step * self.tokens_per_step, "seq_len": self.seq_len},
                tokenizer_info=self.data.spec.tokenizer,
            )
        collectives.barrier()
        return out

    # ------------------------------------------------------------------ the loop

    def _announce(self) -> None:
        """On rank 0: what is trained, and the config it trains with, written beside the outputs."""
        cfg = self.cfg
        if not self.ctx.is_main:
            return
        print(
            f"training {self.total_steps} steps x {self.tokens_per_step:,} tokens "
            f"(TP {self.ctx.tp_size} x DP {self.dp}, ZeRO {cfg.parallel.zero_stage}, {cfg.parallel.precision}, "
            f"P={cfg.parscale.streams}, attention {self.attention_backend}, {self.trainable:,} trainable "
            f"parameters)",
            flush=True,
        )
        if self.data.skip_rows:  # train.skip_tokens, or the tokens_seen train.init_from records
            print(f"data: from token {self.data.skip_rows * self.seq_len:,} of the data order", flush=True)
        atomic_write_text(RunPaths.of(cfg).resolved, self.resolved)

    def run(self) -> dict:
        """Steps until the budget is spent or a stop is agreed, the callbacks acting after each (the
        losses read first when one of them reads them). ``{"stopped": True, "step": int}`` after a
        stop, else the last loss, the skipped count and what the callbacks report (``results``)."""
        self._announce()
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.step < self.total_steps and not self.stop_agreed:
            self.train_step()
            if any(callback.reads_losses(self, self.step) for callback in self.callbacks):
                self.resolve()
            for callback in self.callbacks:
                callback.on_step_end(self, self.step)
        self.resolve()  # the last steps' losses, if no callback read them
        for callback in self.callbacks:
            callback.on_train_end(self)
        self.sink.close()
        if self.stop_agreed:
            return {"stopped": True, "step": self.step}
        loss = self.last.loss_value if self.last is not None else None
        return {"stopped": False, "step": self.step, "loss": loss, "skipped": self.skipped, **self.results}
