"""The training loop, one for both stages: DeepSpeed engine over the TP model, deterministic data
order, WSD schedule, non-finite steps skipped and counted, periodic evaluation, checkpoints,
preemption signals, exact resume, and a portable export at the end."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import LoadedConfig, dump_resolved, write_resolved
from ..errors import JobError
from . import checkpointing as ckpt
from .engine import build_engine, set_lr
from .metrics import MetricsSink, format_seconds
from .optim import apply_trainable
from .schedule import WSD

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Trainer:
    def __init__(self, loaded: LoadedConfig):
        from data_prep.manifest import read_manifest

        from ..data.loader import SplitStream, dataset_entries
        from ..distributed import init_distributed
        from ..model import ParScaleLM

        cfg = self.cfg = loaded.config
        loaded.require("train", "model", "train")
        self.loaded, self.resolved = loaded, dump_resolved(loaded)
        self.ctx = init_distributed(loaded)
        data_dir = dataset_entries(cfg)[0].path  # tokenizer and seq_len (the others must match)
        manifest = read_manifest(data_dir)
        self.data_dir = Path(data_dir)
        self.seq_len = manifest["seq_len"]
        if self.seq_len > cfg.model.max_seq_len:
            raise loaded.error("model.max_seq_len", f"{cfg.model.max_seq_len} is below the data's seq_len {self.seq_len}")
        self.vocab = cfg.model.vocab_size or manifest["tokenizer"]["vocab_size"]
        if self.vocab < manifest["tokenizer"]["vocab_size"]:
            raise loaded.error("model.vocab_size", f"{self.vocab} is below the tokenizer's {manifest['tokenizer']['vocab_size']}")
        self.pad_id = max(manifest["tokenizer"]["pad_id"], 0)
        par = cfg.parallel
        self.dp, self.gas = self.ctx.dp_size, par.grad_accum_steps(self.ctx.dp_size)
        self.tokens_per_step = par.global_batch_size * self.seq_len
        self.total_steps = max(1, math.ceil(cfg.train.tokens / self.tokens_per_step))
        self.skip_rows = cfg.train.skip_tokens // self.seq_len
        self.train_data = SplitStream(cfg, "train", self.skip_rows + self.total_steps * par.global_batch_size,
                                      cfg.run.seed)
        try:
            samples = cfg.eval.max_batches * par.micro_batch_size * self.dp
            self.val_data = SplitStream(cfg, "val", samples, cfg.run.seed + 1)
        except ValueError:
            self.val_data = None

        torch.manual_seed(cfg.run.seed)
        model = ParScaleLM(cfg.model, cfg.parscale, self.vocab, tp_rank=self.ctx.tp_rank, tp_size=self.ctx.tp_size,
                           activation_checkpointing=par.activation_checkpointing)
        self.ckpt_dir = Path(cfg.checkpoint.dir or Path(cfg.run.output_dir) / "checkpoints")
        resume_tag = self._resume_tag() if cfg.checkpoint.resume else None
        if resume_tag and ckpt.is_resharded(self.ckpt_dir / resume_tag):
            self._load_resharded(model, self.ckpt_dir / resume_tag)
        elif cfg.train.init_from and not resume_tag:
            self._init_from(model, cfg.train.init_from)
        self.trainable = apply_trainable(model, cfg)
        self.engine = build_engine(model.to(self.ctx.device), cfg, self.dp)
        self.schedule = WSD.build(cfg.schedule, cfg.optimizer.lr, self.total_steps, self.tokens_per_step)
        from ..model.counting import train_flops_per_token

        self.flops_per_token = train_flops_per_token(cfg.model, cfg.parscale, model.padded_vocab_size, self.seq_len)
        self.step, self.skipped, self.nonfinite_in_a_row = 0, 0, 0
        self.resumed_from = self._resume(resume_tag) if resume_tag else None
        self.sink = MetricsSink(cfg, enabled=self.ctx.is_main)
        self._stop_requested = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._request_stop)

    # ------------------------------------------------------------------ setup helpers

    def _identity(self) -> dict:
        cfg = self.cfg
        return {
            "model": cfg.model.model_dump(mode="json"), "parscale.streams": cfg.parscale.streams,
            "parscale.prefix_len": cfg.parscale.prefix_len, "parscale.prefix_init": cfg.parscale.prefix_init,
            "parscale.trainable": cfg.parscale.trainable, "parallel.tensor_parallel_size": cfg.parallel.tensor_parallel_size,
            "parallel.zero_stage": cfg.parallel.zero_stage, "vocab_size": self.vocab,
        }

    def _init_from(self, model, source: str) -> None:
        from ..checkpoint.portable import read_config, read_weights
        from ..checkpoint.sharding import load_full_state

        meta = read_config(source)
        if meta["model"] != self.cfg.model.model_dump(mode="json") | {"vocab_size": meta["model"].get("vocab_size")}:
            diffs = [k for k, v in meta["model"].items() if k != "vocab_size" and getattr(self.cfg.model, k) != v]
            if diffs:
                raise self.loaded.error("train.init_from", f"{source} has a different model shape ({', '.join(diffs)})")
        new = load_full_state(model, read_weights(source), source, allow_new_parscale=self.cfg.parscale.streams > 1)
        if self.ctx.is_main:
            print(f"initialised from {source}" + (f" (+{len(new)} new ParScale tensors)" if new else ""), flush=True)

    def _resume_tag(self) -> str | None:
        """The checkpoint to resume from, checked against the config before anything loads."""
        tag = ckpt.latest_tag(self.ckpt_dir)
        if tag is not None:
            folder = self.ckpt_dir / tag
            ckpt.check_compatible(ckpt.read_state(folder)["identity"], self._identity(), folder,
                                  ignore=("parallel.zero_stage",) if ckpt.is_resharded(folder) else ())
        return tag

    def _load_resharded(self, model, folder: Path) -> None:
        """Weights of this TP rank from a ``convert reshard`` output (before the engine is built)."""
        from ..checkpoint.trainer_ckpt import TrainerCheckpoint

        state = TrainerCheckpoint(folder).rank_state(self.ctx.tp_rank)
        params = dict(model.named_parameters())
        if state.keys() != params.keys():
            raise JobError(f"{folder}: its tensors do not match this model ({sorted(state.keys() ^ params.keys())[:4]})")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])

    def _resume(self, tag: str) -> str:
        folder = self.ckpt_dir / tag
        if ckpt.is_resharded(folder):
            saved = ckpt.read_state(folder)
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
        from ..data.loader import collate

        rows = data.rows(start, count)
        return collate(rows, self.seq_len, self.pad_id, self.cfg.model.document_attention).to(self.ctx.device)

    def _forward(self, batch):
        return self.engine(batch.input_ids, labels=batch.labels, loss_mask=batch.loss_mask,
                           segment_ids=batch.segment_ids)

    def _finite_grads(self) -> bool:
        bad = torch.zeros(1)
        for p in self.engine.module.parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                bad.fill_(1)
                break
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad.item() == 0

    def train_step(self) -> dict:
        from ..data.loader import micro_batch_start

        par = self.cfg.parallel
        lr = self.schedule(self.step)
        set_lr(self.engine, lr)
        losses, weights = [], []
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
                for p in self.engine.module.parameters():
                    if p.grad is not None:
                        p.grad.zero_()
                set_lr(self.engine, 0.0)
            self.engine.step()
            losses.append(out.loss.detach().float())
            if out.stream_weights is not None:
                mask = batch.loss_mask[..., None]
                weights.append((out.stream_weights.detach() * mask).sum((0, 1)) / mask.sum().clamp(min=1))
        loss = torch.stack(losses).mean().reshape(1)
        dist.all_reduce(loss, group=self._dp_group())
        loss = loss.item() / self.dp
        applied = self.engine.was_step_applied() and not guarded_skip and math.isfinite(loss)
        self.step += 1
        if applied:
            self.nonfinite_in_a_row = 0
        else:
            self.skipped += 1
            self.nonfinite_in_a_row += 1
        norm = self.engine.get_global_grad_norm()
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(norm) if norm is not None else None,
                  "skipped": self.skipped, "applied": applied}
        if weights:
            mean = torch.stack(weights).mean(0)
            record["stream_weights"] = mean.tolist()
            record["stream_entropy"] = float(-(mean * mean.clamp(min=1e-12).log()).sum())
        return record

    def _dp_group(self):
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_group()

    # ------------------------------------------------------------------ eval, checkpoints

    def evaluate(self) -> dict | None:
        if self.val_data is None:
            return None
        par = self.cfg.parallel
        self.engine.eval()
        total = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for b in range(self.cfg.eval.max_batches):
                start = (b * self.dp + self.ctx.dp_rank) * par.micro_batch_size
                batch = self._batch(self.val_data, start, par.micro_batch_size)
                out = self._forward(batch)
                total += torch.tensor([out.loss.item() * batch.tokens, batch.tokens], dtype=torch.float64)
        self.engine.train()
        dist.all_reduce(total, group=self._dp_group())
        loss = (total[0] / total[1].clamp(min=1)).item()
        return {"step": self.step, "val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    def save(self) -> Path:
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
        dist.barrier()
        return out

    # ------------------------------------------------------------------ the loop

    def _stop_agreed(self) -> bool:
        """A signal or the stop file seen by any rank stops every rank at the same step."""
        stop_file = self.cfg.checkpoint.stop_file
        if stop_file and not self._stop_requested and Path(stop_file).exists():
            self._stop_requested = True
            print(f"rank {self.ctx.rank}: {stop_file} appeared: saving and stopping", flush=True)
        flag = torch.tensor([1.0 if self._stop_requested else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() > 0

    def run(self) -> dict:
        cfg = self.cfg
        log_every, eval_every, save_every = cfg.logging.interval_steps, cfg.eval.interval_steps, cfg.checkpoint.interval_steps
        if self.ctx.is_main:
            print(f"training {self.total_steps} steps x {self.tokens_per_step:,} tokens "
                  f"(TP {self.ctx.tp_size} x DP {self.dp}, ZeRO {cfg.parallel.zero_stage}, {cfg.parallel.precision}, "
                  f"P={cfg.parscale.streams}, {self.trainable:,} trainable parameters)", flush=True)
        if self.ctx.is_main:
            write_resolved(self.loaded, cfg.run.output_dir)
        start_step, started = self.step, time.perf_counter()
        window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "step": self.step}
        last = {}
        saved_at = self.step
        while self.step < self.total_steps:
            record = self.train_step()
            window["loss"] += record["loss"] if math.isfinite(record["loss"]) else 0.0
            window["n"] += 1
            last = record
            if self.step % log_every == 0 or self.step == self.total_steps:
                self._log(record, window, started, start_step)
                window = {"loss": 0.0, "n": 0, "t": time.perf_counter(), "step": self.step}
            if eval_every and self.step % eval_every == 0 and self.step < self.total_steps:
                self._log_eval()
            stop = self._stop_agreed()
            if self.nonfinite_in_a_row >= cfg.train.max_nonfinite_in_a_row:
                self.save()
                raise JobError(f"{self.nonfinite_in_a_row} non-finite steps in a row (train.max_nonfinite_in_a_row="
                               f"{cfg.train.max_nonfinite_in_a_row}); saved step {self.step} in {self.ckpt_dir}; lower "
                               "optimizer.lr or check the data")
            if self.step % save_every == 0 or stop:
                self.save()
                saved_at = self.step
            if stop:
                if cfg.checkpoint.stop_file:
                    Path(cfg.checkpoint.stop_file).unlink(missing_ok=True)  # a resumed run must not stop at once
                if self.ctx.is_main:
                    print(f"stop requested: saved step {self.step} in {self.ckpt_dir}; rerun to resume", flush=True)
                self.sink.close()
                return {"stopped": True, "step": self.step}
        final = self._log_eval()
        if saved_at != self.step:
            self.save()
        portable = self.export_portable()
        self.sink.close()
        return {"stopped": False, "step": self.step, "loss": last.get("loss"), "skipped": self.skipped,
                "val": final, "portable": str(portable)}

    def _log(self, record: dict, window: dict, started: float, start_step: int) -> None:
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
        result = self.evaluate()
        if result is not None:
            self.sink.log({**result, "kind": "eval"},
                          console=f"eval step {self.step} | val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.2f}")
        return result
