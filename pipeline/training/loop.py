"""The training loop, one for both stages: DeepSpeed engine over the TP model, deterministic data
order, WSD schedule, non-finite steps skipped and counted, periodic evaluation, checkpoints,
preemption signals, exact resume, and a portable export at the end."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LoadedConfig, dump_resolved, write_resolved
from ..errors import JobError
from ..utils import collectives
from ..checkpoint import layout
from . import checkpointing as ckpt
from .engine import build_engine, set_lr
from .evaluation import loss_pass, validation_rows
from .metrics import MetricsSink, format_seconds
from .optim import apply_trainable
from .schedule import WSD

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass
class StepOutcome:
    """One optimizer step, kept on the device until a logging or checkpoint step reads it."""

    step: int
    lr: float
    loss: torch.Tensor  # this rank's mean loss over its micro-batches (device, fp32)
    applied: bool  # DeepSpeed applied the update; after _resolve, also: the DP-mean loss was finite
    stream_weights: torch.Tensor | None  # [P] mean aggregation weights over real tokens (device)
    loss_value: float | None = None  # the DP-mean loss, set by _resolve


@contextlib.contextmanager
def optimizer_step_skipped(optimizer):
    """Inside, ``optimizer.step`` does nothing: a skipped step moves neither the weights nor the
    optimizer's moments and step count."""
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del optimizer.step


class Trainer:
    def __init__(self, loaded: LoadedConfig):
        from ..data.loader import DataSpec, EmptySplit, SplitStream
        from ..distributed import init_distributed
        from ..model import ParScaleLM

        cfg = self.cfg = loaded.config
        loaded.require("train", "model", "train")
        self.loaded, self.resolved = loaded, dump_resolved(loaded)
        self.ctx = init_distributed(loaded)
        self.data_spec = DataSpec.of(cfg)
        self.data_dir, self.seq_len = self.data_spec.path, self.data_spec.seq_len
        if self.seq_len > cfg.model.max_seq_len:
            raise loaded.error("model.max_seq_len", f"{cfg.model.max_seq_len} is below the data's seq_len {self.seq_len}")
        self.vocab = self.data_spec.vocab_size(cfg)
        if self.vocab < self.data_spec.tokenizer_vocab:
            raise loaded.error("model.vocab_size", f"{self.vocab} is below the tokenizer's {self.data_spec.tokenizer_vocab}")
        par = cfg.parallel
        self.dp, self.gas = self.ctx.dp_size, par.grad_accum_steps(self.ctx.dp_size)
        self.tokens_per_step = par.global_batch_size * self.seq_len
        self.total_steps = cfg.train.steps(self.tokens_per_step)
        self.skip_rows = cfg.train.skip_tokens // self.seq_len
        self.train_data = SplitStream(cfg, "train", self.skip_rows + self.total_steps * par.global_batch_size,
                                      cfg.run.seed)
        try:
            self.val_data = validation_rows(cfg, cfg.run.seed + 1)  # the rows parscale eval reads
        except EmptySplit:  # no validation split: training runs without evaluation
            self.val_data = None

        self.attention_backend = self._attention_backend()
        torch.manual_seed(cfg.run.seed)
        model = ParScaleLM(cfg.model, cfg.parscale, self.vocab, tp_rank=self.ctx.tp_rank, tp_size=self.ctx.tp_size,
                           activation_checkpointing=par.activation_checkpointing)
        self.ckpt_dir = Path(cfg.checkpoint.dir or Path(cfg.run.output_dir) / "checkpoints")
        resume_tag = self._resume_tag() if cfg.checkpoint.resume else None
        if resume_tag and layout.is_resharded(self.ckpt_dir / resume_tag):
            self._load_resharded(model, self.ckpt_dir / resume_tag)
        elif cfg.train.init_from and not resume_tag:
            self._init_from(model, cfg.train.init_from)
        self.trainable = apply_trainable(model, cfg)
        self.engine = build_engine(model.to(self.ctx.device), cfg, self.dp)
        self.schedule = WSD.build(cfg.schedule, cfg.optimizer.lr, self.total_steps, self.tokens_per_step)
        from ..model.counting import train_flops_per_token

        self.flops_per_token = train_flops_per_token(cfg.model, cfg.parscale, model.padded_vocab_size, self.seq_len)
        self.step, self.skipped, self.nonfinite_in_a_row, self._nonfinite_peak = 0, 0, 0, 0
        self._pending: list[StepOutcome] = []  # steps whose losses are still on the device
        self._last: StepOutcome | None = None
        self._window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "step": 0}
        self.resumed_from = self._resume(resume_tag) if resume_tag else None
        self.sink = MetricsSink(cfg, enabled=self.ctx.is_main)
        self._stop_requested = False
        self._prefix_start = None  # the prefixes when this process started (stream diagnostics)
        if cfg.parscale.streams > 1 and self.val_data is not None:
            self._prefix_similarity()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._request_stop)

    # ------------------------------------------------------------------ setup helpers

    def _identity(self) -> dict:
        cfg = self.cfg
        return {
            "model": cfg.model.identity(), "parscale.streams": cfg.parscale.streams,
            "parscale.prefix_len": cfg.parscale.prefix_len, "parscale.prefix_init": cfg.parscale.prefix_init,
            "parscale.trainable": cfg.parscale.trainable, "parallel.tensor_parallel_size": cfg.parallel.tensor_parallel_size,
            "parallel.zero_stage": cfg.parallel.zero_stage, "vocab_size": self.vocab,
            **({"parscale.single_prefix": True} if cfg.parscale.single_prefix else {}),
        }

    def _attention_backend(self) -> str:
        """The kernel masked training batches run on (checked before anything is built)."""
        from ..model.flex import training_backend

        try:
            return training_backend(self.cfg.model.attention_backend, torch.device(self.ctx.device))
        except ValueError as exc:
            raise self.loaded.error("model.attention_backend", str(exc)) from None

    def _init_from(self, model, source: str) -> None:
        from ..checkpoint.portable import read_config, read_weights
        from ..checkpoint.sharding import load_full_state

        meta = read_config(source)
        if meta["model"] != self.cfg.model.identity() | {"vocab_size": meta["model"].get("vocab_size")}:
            diffs = [k for k, v in meta["model"].items() if k != "vocab_size" and getattr(self.cfg.model, k) != v]
            if diffs:
                raise self.loaded.error("train.init_from", f"{source} has a different model shape ({', '.join(diffs)})")
        new = load_full_state(model, read_weights(source), source, allow_new_parscale=self.cfg.parscale.has_prefix)
        if self.ctx.is_main:
            print(f"initialised from {source}" + (f" (+{len(new)} new ParScale tensors)" if new else ""), flush=True)

    def _resume_tag(self) -> str | None:
        """The checkpoint to resume from, checked against the config before anything loads."""
        tag = ckpt.intact_tag(self.ckpt_dir, hashes=self.cfg.checkpoint.verify_on_resume == "sha256")
        if tag is not None:
            folder = self.ckpt_dir / tag
            ckpt.check_compatible(layout.read_state(folder)["identity"], self._identity(), folder,
                                  ignore=("parallel.zero_stage",) if layout.is_resharded(folder) else ())
        return tag

    def _load_resharded(self, model, folder: Path) -> None:
        """Weights of this TP rank from a ``convert reshard`` output (before the engine is built)."""
        from ..checkpoint.sharding import load_rank_state
        from ..checkpoint.trainer_ckpt import TrainerCheckpoint

        load_rank_state(model, TrainerCheckpoint(folder).rank_state(self.ctx.tp_rank), str(folder))

    def _resume(self, tag: str) -> str:
        folder = self.ckpt_dir / tag
        if layout.is_resharded(folder):
            saved = layout.read_state(folder)
            note = " (resharded: weights, step and data position restored; Adam moments start afresh)"
        else:
            saved, note = ckpt.load(self.engine, self.ckpt_dir, tag), ""
        self.step, self.skipped = saved["step"], saved["skipped"]
        if self.ctx.is_main:
            print(f"resumed from {folder} at step {self.step}{note}", flush=True)
        return tag

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    # ------------------------------------------------------------------ one step

    def _batch(self, data, start: int, count: int):
        return self.data_spec.collate(data.rows(start, count), self.cfg).to(self.ctx.device)

    def _forward(self, batch, **extra):
        return self.engine(batch.input_ids, labels=batch.labels, loss_mask=batch.loss_mask,
                           segment_ids=batch.segment_ids, **extra)

    def _finite_grads(self) -> bool:
        """Whether every rank's gradients are finite: one device-side reduction and one host read."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        bad = torch.zeros(1, device=self.ctx.device)
        if grads:
            bad = (~torch.stack([torch.isfinite(g).all() for g in grads]).all()).float().reshape(1)
        return collectives.all_reduce(bad, "max").item() == 0

    def train_step(self) -> StepOutcome:
        """One optimizer step. Nothing here waits for the device (no ``.item()``): the loss stays a
        device tensor until :meth:`_resolve` reads a whole logging window at once. The one
        exception is ZeRO 0 in fp32, where DeepSpeed checks nothing and the non-finite guard must."""
        from ..data.loader import micro_batch_start

        par = self.cfg.parallel
        lr = self.schedule(self.step)
        set_lr(self.engine, lr)
        losses, weights = [], None
        guard = par.zero_stage == 0 and par.precision == "fp32"  # ZeRO >= 1 and bf16 skip non-finite steps themselves
        guarded_skip = False
        for micro in range(self.gas):
            start = self.skip_rows + micro_batch_start(self.step, micro, self.ctx.dp_rank, par.global_batch_size,
                                                       par.micro_batch_size, self.dp)
            batch = self._batch(self.train_data, start, par.micro_batch_size)
            out = self._forward(batch)
            self.engine.backward(out.loss)
            if guard and micro == self.gas - 1 and not self._finite_grads():
                guarded_skip = True
            with optimizer_step_skipped(self.engine.optimizer) if guarded_skip else contextlib.nullcontext():
                self.engine.step()  # DeepSpeed's bookkeeping advances and the gradients are cleared
            losses.append(out.loss.detach().float())
            if out.stream_weights is not None:
                mask = batch.loss_mask[..., None]
                w = (out.stream_weights.detach() * mask).sum((0, 1)) / mask.sum().clamp(min=1)
                weights = w if weights is None else weights + w
        self.step += 1
        outcome = StepOutcome(self.step, lr, torch.stack(losses).mean(), self.engine.was_step_applied() and not guarded_skip,
                              None if weights is None else weights / self.gas)
        self._pending.append(outcome)
        return outcome

    def _resolve(self) -> None:
        """Read the pending steps' losses (one DP all-reduce, one host read) and count skipped steps:
        a step counts as applied when DeepSpeed applied it and its DP-mean loss is finite."""
        if not self._pending:
            return
        local = torch.stack([o.loss for o in self._pending])
        values = (collectives.all_reduce(local, "sum", self._dp_group()) / self.dp).tolist()
        for outcome, loss in zip(self._pending, values):
            outcome.loss_value = loss
            outcome.applied = outcome.applied and math.isfinite(loss)
            if outcome.applied:
                self.nonfinite_in_a_row = 0
            else:
                self.skipped += 1
                self.nonfinite_in_a_row += 1
                self._nonfinite_peak = max(self._nonfinite_peak, self.nonfinite_in_a_row)
            if math.isfinite(loss):
                self._window["loss"] += loss
            self._window["n"] += 1
        self._last = self._pending[-1]
        self._pending = []

    def _record(self, outcome: StepOutcome) -> dict:
        norm = self.engine.get_global_grad_norm()
        record = {"step": outcome.step, "loss": outcome.loss_value, "lr": outcome.lr,
                  "grad_norm": float(norm) if norm is not None else None, "skipped": self.skipped,
                  "applied": outcome.applied}
        if outcome.stream_weights is not None:
            mean = outcome.stream_weights.float()
            record["stream_weights"] = mean.tolist()
            record["stream_entropy"] = float(-(mean * mean.clamp(min=1e-12).log()).sum())
        return record

    def _dp_group(self):
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_group()

    # ------------------------------------------------------------------ eval, checkpoints

    def _eval_pass(self, stats=None) -> float:
        """Mean validation loss over every DP rank's batches (the loop parscale eval runs);
        ``stats`` (StreamStats) collects the streams' diagnostics on the way."""
        return loss_pass(lambda batch, states: self._forward(batch, return_stream_states=states),
                         lambda start, count: self._batch(self.val_data, start, count), self.cfg.eval.max_batches,
                         self.cfg.parallel.micro_batch_size, self.ctx.device, self.ctx.dp_rank, self.dp,
                         self._dp_group(), stats)[0]

    def evaluate(self) -> dict | None:
        if self.val_data is None:
            return None
        from ..model.stream_stats import StreamStats, mean_prefix

        streams = self.cfg.parscale.streams
        self.engine.eval()
        stats = StreamStats(streams, self.ctx.device) if streams > 1 else None
        loss = self._eval_pass(stats)
        result = {"step": self.step, "tokens_seen": self.step * self.tokens_per_step, "val_loss": loss,
                  "val_ppl": math.exp(min(loss, 50.0))}
        if stats is not None:
            result |= stats.result(self._dp_group()) | self._prefix_similarity()
            if self.cfg.eval.stream_diagnostics:
                with mean_prefix(self.engine.module):
                    result["diversity_gain"] = self._eval_pass() - loss
        self.engine.train()
        return result

    def _prefix_similarity(self) -> dict:
        """Mean pairwise cosine of the streams' prefixes, and of their change since this run started."""
        import deepspeed
        from megatron.core import parallel_state as ps

        from ..model.stream_stats import mean_pairwise_cosine, stream_vectors

        module = self.engine.module
        params = [p for layer in module.model.layers for p in layer.self_attn.prefix.parameters()]
        gather = deepspeed.zero.GatheredParameters(params) if self.cfg.parallel.zero_stage == 3 else contextlib.nullcontext()
        with gather:
            vectors = stream_vectors(module)
        tp = ps.get_tensor_model_parallel_group()
        out = {"prefix_cosine": mean_pairwise_cosine(vectors, tp)}
        if self._prefix_start is None:
            self._prefix_start = vectors
        else:
            out["update_cosine"] = mean_pairwise_cosine(vectors - self._prefix_start, tp)
        return out

    def save(self) -> Path:
        self._resolve()  # the skipped count is part of the state
        state = {"step": self.step, "skipped": self.skipped, "consumed_samples": self.step * self.cfg.parallel.global_batch_size,
                 "tokens_seen": self.step * self.tokens_per_step, "identity": self._identity()}
        return ckpt.save(self.engine, self.ckpt_dir, self.step, state, self.cfg.checkpoint.keep_last, self.resolved)

    def export_portable(self) -> Path:
        """Full weights (TP slices and ZeRO-3 partitions gathered) as a portable checkpoint."""
        import deepspeed

        from ..checkpoint.portable import save_portable_state
        from ..checkpoint.sharding import gather_full_state

        params = list(self.engine.module.parameters())
        gather = deepspeed.zero.GatheredParameters(params) if self.cfg.parallel.zero_stage == 3 else contextlib.nullcontext()
        with gather:
            state = gather_full_state(self.engine.module)
        out = Path(self.cfg.run.output_dir) / "portable"
        if self.ctx.is_main:
            save_portable_state(state, self.cfg.model, self.cfg.parscale, self.vocab, out,
                                tokenizer=self.data_dir / "tokenizer.model",
                                meta={"step": self.step, "tokens_seen": self.step * self.tokens_per_step})
        collectives.barrier()
        return out

    # ------------------------------------------------------------------ the loop

    def _stop_wanted_here(self) -> bool:
        """A signal, or the stop file, seen by this rank."""
        stop_file = self.cfg.checkpoint.stop_file
        if stop_file and not self._stop_requested and Path(stop_file).exists():
            self._stop_requested = True
            print(f"rank {self.ctx.rank}: {stop_file} appeared: saving and stopping", flush=True)
        return self._stop_requested

    def run(self) -> dict:
        cfg = self.cfg
        log_every, eval_every, save_every = cfg.logging.interval_steps, cfg.eval.interval_steps, cfg.checkpoint.interval_steps
        limit = cfg.train.max_nonfinite_in_a_row
        if self.ctx.is_main:
            print(f"training {self.total_steps} steps x {self.tokens_per_step:,} tokens "
                  f"(TP {self.ctx.tp_size} x DP {self.dp}, ZeRO {cfg.parallel.zero_stage}, {cfg.parallel.precision}, "
                  f"P={cfg.parscale.streams}, attention {self.attention_backend}, {self.trainable:,} trainable "
                  f"parameters)", flush=True)
        if self.ctx.is_main:
            write_resolved(self.loaded, cfg.run.output_dir)
        start_step, started = self.step, time.perf_counter()
        self._window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "step": self.step}
        saved_at = self.step
        # a stop seen by any rank at step s is agreed by all at step s + 1 (asynchronously, over gloo)
        agreement = collectives.Agreement()
        while self.step < self.total_steps:
            self.train_step()
            stop = agreement.post(self._stop_wanted_here())
            logging = self.step % log_every == 0 or self.step == self.total_steps
            saving = self.step % save_every == 0 or stop
            if logging or saving:
                self._resolve()
            if logging:
                self._log(self._record(self._last), started, start_step)
                self._window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "step": self.step}
            if self._nonfinite_peak >= limit:
                agreement.result()
                self.save()
                raise JobError(f"{self._nonfinite_peak} non-finite steps in a row (train.max_nonfinite_in_a_row="
                               f"{limit}); saved step {self.step} in {self.ckpt_dir}; lower optimizer.lr or check "
                               "the data")
            if eval_every and self.step % eval_every == 0 and self.step < self.total_steps:
                self._log_eval()
            if saving:
                self.save()
                saved_at = self.step
            if stop:
                agreement.result()
                if cfg.checkpoint.stop_file:
                    Path(cfg.checkpoint.stop_file).unlink(missing_ok=True)  # a resumed run must not stop at once
                if self.ctx.is_main:
                    print(f"stop requested: saved step {self.step} in {self.ckpt_dir}; rerun to resume", flush=True)
                self.sink.close()
                return {"stopped": True, "step": self.step}
        agreement.result()
        self._resolve()
        final = self._log_eval()
        if saved_at != self.step:
            self.save()
        portable = self.export_portable()
        self.sink.close()
        last = self._last.loss_value if self._last is not None else None
        return {"stopped": False, "step": self.step, "loss": last, "skipped": self.skipped,
                "val": final, "portable": str(portable)}

    def _log(self, record: dict, started: float, start_step: int) -> None:
        window = self._window
        now = time.perf_counter()
        steps = self.step - window["step"]
        tok_s = steps * self.tokens_per_step / max(now - window["t"], 1e-9)
        done = self.step - start_step
        eta = (now - started) / max(done, 1) * (self.total_steps - self.step)
        record = {**record, "loss_avg": window["loss"] / max(window["n"], 1), "tokens_per_s": tok_s,
                  "tokens_seen": self.step * self.tokens_per_step, "elapsed_s": now - started, "eta_s": eta}
        peak = self.cfg.logging.peak_flops
        mfu = ""
        if peak:
            record["mfu"] = tok_s * self.flops_per_token / (peak * self.ctx.world_size)
            mfu = f" | MFU {record['mfu']:.1%}"
        streams = ""
        if "stream_weights" in record:
            streams = " | w " + "/".join(f"{w:.2f}" for w in record["stream_weights"]) + f" H {record['stream_entropy']:.3f}"
        norm = record["grad_norm"]
        self.sink.log(record, console=(
            f"step {self.step}/{self.total_steps} | loss {record['loss_avg']:.4f} | lr {record['lr']:.2e} | grad "
            f"{norm if norm is None else f'{norm:.3f}'} | {tok_s:,.0f} tok/s{mfu} | elapsed "
            f"{format_seconds(now - started)} | ETA {format_seconds(eta)} | skipped {self.skipped}{streams}"))

    def _log_eval(self) -> dict | None:
        from ..model.stream_stats import SINGLE_PREFIX_GAIN

        result = self.evaluate()
        if result is None:
            return None
        streams = ""
        if "stream_spread" in result:
            streams = (f" | stream spread {result['stream_spread']:.4f} | weight entropy {result['weight_entropy']:.3f}"
                       f" | max weight {result['max_mean_weight']:.3f} | prefix cos {result['prefix_cosine']:.3f}")
        gain = result.get("diversity_gain")
        if gain is not None:
            streams += f" | diversity gain {gain:+.4f}"
        self.sink.log({**result, "kind": "eval"},
                      console=f"eval step {self.step} | val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.2f}"
                              f"{streams}")
        if gain is not None and gain < SINGLE_PREFIX_GAIN and self.ctx.is_main:
            print(f"warning: the streams' own prefixes lower the validation loss by only {gain:+.4f} nats against one "
                  f"shared (mean) prefix (< {SINGLE_PREFIX_GAIN}): this is single-prefix tuning, not parallel scaling "
                  "yet", flush=True)
        return result
