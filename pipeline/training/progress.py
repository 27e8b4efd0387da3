"""What a run says as it goes: per logging step the window's mean loss, tokens/s, ETA and MFU (and
the streams' merge weights), per evaluation the validation loss and stream diagnostics, each as a
console line (rank 0) and a metrics record; and the single-prefix warning."""

from __future__ import annotations

import math
import time

from ..config.job import JobConfig
from ..model.stream_stats import SINGLE_PREFIX_GAIN
from .metrics import MetricsSink, format_seconds


class Progress:
    def __init__(
        self,
        cfg: JobConfig,
        sink: MetricsSink,
        total_steps: int,
        tokens_per_step: int,
        flops_per_token: float,
        world_size: int,
    ):
        self.sink, self.total_steps, self.tokens_per_step = sink, total_steps, tokens_per_step
        self.flops_per_token, self.world_size, self.peak = flops_per_token, world_size, cfg.logging.peak_flops
        self.start(0)

    def start(self, step: int) -> None:
        """The run (re)starts at ``step``: elapsed time and ETA count from here."""
        self.started, self.start_step = time.perf_counter(), step
        self.open_window(step)

    def open_window(self, step: int) -> None:
        self.window_loss, self.window_n, self.window_t, self.window_step = 0.0, 0, time.perf_counter(), step

    def add(self, loss: float) -> None:
        """One resolved step's DP-mean loss (a non-finite one is counted, not averaged)."""
        if math.isfinite(loss):
            self.window_loss += loss
        self.window_n += 1

    def log_step(self, record: dict, step: int, skipped: int) -> dict:
        now = time.perf_counter()
        tok_s = (step - self.window_step) * self.tokens_per_step / max(now - self.window_t, 1e-9)
        eta = (now - self.started) / max(step - self.start_step, 1) * (self.total_steps - step)
        record = {
            **record,
            "loss_avg": self.window_loss / max(self.window_n, 1),
            "tokens_per_s": tok_s,
            "tokens_seen": step * self.tokens_per_step,
            "elapsed_s": now - self.started,
            "eta_s": eta,
        }
        mfu = ""
        if self.peak:
            record["mfu"] = tok_s * self.flops_per_token / (self.peak * self.world_size)
            mfu = f" | MFU {record['mfu']:.1%}"
        streams = ""
        if "stream_weights" in record:
            streams = (
                " | w " + "/".join(f"{w:.2f}" for w in record["stream_weights"]) + f" H {record['stream_entropy']:.3f}"
            )
        norm = record["grad_norm"]
        self.sink.log(
            record,
            console=(
                f"step {step}/{self.total_steps} | loss {record['loss_avg']:.4f} | lr {record['lr']:.2e} | grad "
                f"{norm if norm is None else f'{norm:.3f}'} | {tok_s:,.0f} tok/s{mfu} | elapsed "
                f"{format_seconds(now - self.started)} | ETA {format_seconds(eta)} | skipped {skipped}{streams}"
            ),
        )
        self.open_window(step)
        return record

    def log_eval(self, result: dict, step: int, warn: bool) -> None:
        streams = ""
        if "stream_spread" in result:
            streams = (
                f" | stream spread {result['stream_spread']:.4f} | weight entropy {result['weight_entropy']:.3f}"
                f" | max weight {result['max_mean_weight']:.3f} | prefix cos {result['prefix_cosine']:.3f}"
            )
        gain = result.get("diversity_gain")
        if gain is not None:
            streams += f" | diversity gain {gain:+.4f}"
        self.sink.log(
            {**result, "kind": "eval"},
            console=f"eval step {step} | val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.2f}{streams}",
        )
        if warn and gain is not None and gain < SINGLE_PREFIX_GAIN:
            print(
                f"warning: the streams' own prefixes lower the validation loss by only {gain:+.4f} nats against one "
                f"shared (mean) prefix (< {SINGLE_PREFIX_GAIN}): this is single-prefix tuning, not parallel scaling "
                "yet",
                flush=True,
            )
