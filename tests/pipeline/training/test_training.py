"""The trainer end to end on a tiny model: ZeRO stages against a plain PyTorch AdamW loop, exact
resume after kill -9 (TP=2 x DP=2, ZeRO 1 and 3), frozen backbone, stage 1 -> stage 2, signals,
non-finite steps, refused checkpoints."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time

import pytest
import torch
from helpers.paths import REPO, WORKERS
from helpers.training import job_config, metrics, step_losses, train, train_command, train_ranks
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def data(prepared_data):
    return prepared_data


def _plain_pytorch_losses(config_path, steps: int) -> list[float]:
    """The same job as a plain loop: full global batch in one process, torch AdamW, same clipping."""
    from data_prep.manifest import read_manifest
    from pipeline.config import load_config
    from pipeline.data.loader import SplitStream, collate, micro_batch_start
    from pipeline.distributed import single_process
    from pipeline.model import ParScaleLM
    from pipeline.training.optim import param_groups
    from pipeline.training.schedule import WSD

    cfg = load_config(config_path).config
    manifest = read_manifest(cfg.data.output_dir)
    par, seq = cfg.parallel, manifest["seq_len"]
    dp = par.data_parallel_size or 2
    gas = par.grad_accum_steps(dp)
    losses = []
    with single_process():
        torch.manual_seed(cfg.run.seed)
        model = ParScaleLM(cfg.model, cfg.parscale, manifest["tokenizer"]["vocab_size"])
        opt = torch.optim.AdamW(
            param_groups(model, cfg.optimizer, cfg.parscale),
            lr=cfg.optimizer.lr,
            betas=cfg.optimizer.betas,
            eps=cfg.optimizer.eps,
        )
        data = SplitStream(cfg, "train", steps * par.global_batch_size, cfg.run.seed)
        schedule = WSD.build(cfg.schedule, cfg.optimizer.lr, steps, par.global_batch_size * seq)
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = schedule(step)
            step_loss = 0.0
            for micro in range(gas):
                for rank in range(dp):
                    start = micro_batch_start(step, micro, rank, par.global_batch_size, par.micro_batch_size, dp)
                    b = collate(data.rows(start, par.micro_batch_size), seq, 0, cfg.model.document_attention)
                    loss = model(b.input_ids, labels=b.labels, loss_mask=b.loss_mask, segment_ids=b.segment_ids).loss
                    (loss / (gas * dp)).backward()
                    step_loss += loss.item() / (gas * dp)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
            opt.step()
            opt.zero_grad()
            losses.append(step_loss)
    return losses


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_matches_plain_pytorch_adamw(tmp_path, data, stage):
    config = job_config(
        tmp_path,
        data,
        f"zero{stage}",
        parallel={"zero_stage": stage, "data_parallel_size": 2},
        train={"tokens": 4 * 8 * 32},
    )
    assert train_ranks(config, 2)[0]["step"] == 4
    got = step_losses(tmp_path / f"zero{stage}")
    expected = _plain_pytorch_losses(config, 4)
    assert [round(got[s + 1], 4) for s in range(4)] == pytest.approx([round(x, 4) for x in expected], abs=2e-4)
    assert expected[-1] < expected[0]


def _kill_after_checkpoint(config, nproc: int, ckpt_dir, step: int) -> None:
    proc = subprocess.Popen(
        train_command(config, nproc),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    marker = ckpt_dir / f"step{step:08d}" / "COMPLETE"
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached its first checkpoint"
    # its ranks (each in a session of its own) die with the launcher: none is left to write beside a resume
    deadline = time.time() + 5  # the kernel kills them at once; orphans would train on (and finish the run)
    while time.time() < deadline and _ranks_of(config):
        time.sleep(0.1)
    assert not _ranks_of(config), "ranks of the killed run are still alive"


def _ranks_of(config) -> list[int]:
    """Pids of live processes training ``config``."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = p.info["cmdline"] or []
        if str(config) in cmdline and "train" in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.info["pid"])
    return found


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [1, 3])
def test_kill_9_and_resume_is_exact_at_tp2_dp2(tmp_path, data, stage):
    par = {"zero_stage": stage, "tensor_parallel_size": 2, "data_parallel_size": 2}
    whole = job_config(tmp_path, data, "whole", parallel=par, parscale={"streams": 2, "prefix_len": 4})
    assert train_ranks(whole, 4)[0]["step"] == 8  # the uninterrupted reference (the killed run is torchrun's)
    broken = job_config(tmp_path, data, "broken", parallel=par, parscale={"streams": 2, "prefix_len": 4})
    _kill_after_checkpoint(broken, 4, tmp_path / "broken" / "checkpoints", 4)
    logged = len(metrics(tmp_path / "broken"))
    assert train_ranks(broken, 4)[0]["step"] == 8  # the resume (on forked ranks: the kill was torchrun's)
    appended = [r["step"] for r in metrics(tmp_path / "broken")[logged:] if "loss" in r]
    assert appended and min(appended) == 5  # it went on from step 4's checkpoint, not from the start
    a, b = step_losses(tmp_path / "whole"), step_losses(tmp_path / "broken")
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bitwise: fp32 on CPU
    wa = load_file(str(tmp_path / "whole" / "portable" / "model.safetensors"))
    wb = load_file(str(tmp_path / "broken" / "portable" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _weights(run_dir):
    return load_file(str(run_dir / "portable" / "model.safetensors"))


def test_stage1_then_stage2_parscale_loss_falls_and_frozen_backbone_stays_bit_identical(tmp_path, data):
    stage1 = job_config(tmp_path, data, "stage1", train={"tokens": 16 * 8 * 32})
    proc = train(stage1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses1 = step_losses(tmp_path / "stage1")
    assert losses1[16] < losses1[1] - 0.5
    val1 = [r["val_loss"] for r in metrics(tmp_path / "stage1") if "val_loss" in r][-1]
    dense = _weights(tmp_path / "stage1")
    for name, trainable in (("stage2", "all"), ("frozen", "parscale_only")):
        config = job_config(
            tmp_path,
            data,
            name,
            parscale={"streams": 4, "prefix_len": 4, "trainable": trainable},
            train={"tokens": 8 * 8 * 32, "init_from": str(tmp_path / "stage1" / "portable")},
            schedule={"warmup_tokens": 256, "decay_fraction": 1.0},
        )
        proc = train(config)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "initialised from" in proc.stdout and "+" in proc.stdout
        losses = step_losses(tmp_path / name)
        assert abs(losses[1] - losses1[16]) < 0.5  # starts near where the dense model ended
        val = [r["val_loss"] for r in metrics(tmp_path / name) if "val_loss" in r]
        assert val[-1] < val1  # and goes on learning (held-out loss below stage 1's)
        weights = _weights(tmp_path / name)
        backbone = [k for k in dense]
        changed = [k for k in backbone if not torch.equal(weights[k], dense[k])]
        if trainable == "parscale_only":
            assert changed == []  # bit-identical backbone
        else:
            assert len(changed) == len(backbone)
        assert any(".prefix." in k for k in weights) and "model.aggregate_layer.0.weight" in weights
        final = [r for r in metrics(tmp_path / name) if r.get("kind") == "eval"][-1]  # stream diagnostics
        assert 0 < final["stream_spread"] and 0 < final["weight_entropy"] <= math.log(4) + 1e-9
        assert 0.25 <= final["max_mean_weight"] <= 1 and -1 <= final["update_cosine"] <= 1
        assert math.isfinite(final["diversity_gain"]) and -1 <= final["prefix_cosine"] <= 1
    records = [r for r in metrics(tmp_path / "stage2") if "stream_weights" in r]
    assert records and len(records[-1]["stream_weights"]) == 4 and records[-1]["stream_entropy"] > 0


def test_sigterm_saves_and_the_rerun_resumes(tmp_path, data):
    config = job_config(tmp_path, data, "preempt", train={"tokens": 400 * 8 * 32}, checkpoint={"interval_steps": 1000})
    proc = subprocess.Popen(
        train_command(config, 1),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    metrics_file = tmp_path / "preempt" / "metrics.jsonl"
    while time.time() < deadline and (not metrics_file.exists() or len(metrics_file.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stop requested: saved step" in out
    from pipeline.checkpoint.step_folders import latest_tag

    tag = latest_tag(tmp_path / "preempt" / "checkpoints")
    assert tag is not None
    stopped_at = int(tag.removeprefix("step"))
    config.write_text(config.read_text().replace(f"tokens: {400 * 8 * 32}", f"tokens: {(stopped_at + 2) * 8 * 32}"))
    rerun = train(config)
    assert rerun.returncode == 0 and "resumed from" in rerun.stdout and f"at step {stopped_at}" in rerun.stdout


def test_nonfinite_steps_are_skipped_then_k_in_a_row_stop_with_a_checkpoint(tmp_path, data):
    import sys

    worker = str(WORKERS / "nan_trainer.py")
    config = job_config(
        tmp_path,
        data,
        "nan",
        train={"tokens": 6 * 8 * 32, "max_nonfinite_in_a_row": 3},
        checkpoint={"interval_steps": 1000},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, worker, str(config), "2"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["step"]: r for r in metrics(tmp_path / "nan") if "applied" in r}
    assert records[2]["applied"] is False and records[6]["skipped"] == 1
    assert all(records[s]["applied"] for s in (1, 3, 4, 5, 6))

    config = job_config(tmp_path, data, "nan3", train={"tokens": 8 * 8 * 32, "max_nonfinite_in_a_row": 3})
    proc = subprocess.run(
        [sys.executable, worker, str(config), "3,4,5"], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert "3 non-finite steps in a row (train.max_nonfinite_in_a_row=3); saved step 5" in proc.stderr
    assert (tmp_path / "nan3" / "checkpoints" / "step00000005" / "COMPLETE").exists()


def test_a_skipped_step_under_zero0_fp32_moves_neither_weights_nor_optimizer_state(tmp_path, data, monkeypatch):
    """DeepSpeed checks nothing in ZeRO 0 fp32, so the trainer's guard skips the optimizer step
    itself: AdamW's moments and step count stay as they were, in-process at world size 1."""
    from pipeline.config import load_config
    from pipeline.distributed import destroy_distributed, init_distributed
    from pipeline.distributed.runtime import LAUNCHER_VARS
    from pipeline.training.trainer import Trainer

    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)
    config = job_config(
        tmp_path, data, "skip0", parallel={"zero_stage": 0, "precision": "fp32"}, optimizer={"weight_decay": 0.1}
    )
    loaded = load_config(config)
    trainer = Trainer.from_loaded(loaded, init_distributed(loaded.config, loaded.error))

    def snapshot():
        opt = trainer.engine.optimizer
        state = {
            id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
            for group in opt.param_groups
            for p in group["params"]
        }
        return state, {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}

    def same(a, b):
        assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()
        for k in a[0]:
            for name, v in a[0][k].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b[0][k][name])), name
        assert all(torch.equal(a[1][n], b[1][n]) for n in a[1])

    try:
        assert trainer.train_step().applied  # a real step: AdamW has state now
        before = snapshot()
        forward = trainer._forward

        def poisoned(batch, **kwargs):
            out = forward(batch, **kwargs)
            out.loss = out.loss * float("nan")
            return out

        monkeypatch.setattr(trainer, "_forward", poisoned)
        outcome = trainer.train_step()
        assert not outcome.applied
        same(before, snapshot())
        monkeypatch.setattr(trainer, "_forward", forward)
        assert trainer.train_step().applied
        after = snapshot()
        assert not all(torch.equal(before[1][n], after[1][n]) for n in before[1])  # and it trains on
        assert "step" not in trainer.engine.optimizer.__dict__  # the real optimizer step is back
    finally:
        monkeypatch.undo()
        destroy_distributed()


def test_checkpoint_from_another_layout_is_refused(tmp_path, data):
    config = job_config(tmp_path, data, "layout", train={"tokens": 4 * 8 * 32})
    assert train(config).returncode == 0
    config.write_text(
        config.read_text()
        .replace("train:", "parscale:\n  streams: 2\n  prefix_len: 4\ntrain:", 1)
        .replace(f"tokens: {4 * 8 * 32}", f"tokens: {8 * 8 * 32}")
    )
    proc = train(config)
    assert proc.returncode == 2
    assert "does not match the config (parscale.streams: checkpoint 1, config 2" in proc.stderr
    assert "train.init_from" in proc.stderr


def test_a_damaged_checkpoint_is_set_aside_and_the_newest_intact_one_resumes(tmp_path, data):
    config = job_config(tmp_path, data, "damaged")  # checkpoints at steps 4 and 8
    assert train(config).returncode == 0
    ckpts = tmp_path / "damaged" / "checkpoints"
    victim = max((ckpts / "step00000008").glob("*model_states.pt"))
    flipped = bytearray(victim.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # same size: only the recorded sha256 can tell
    victim.write_bytes(bytes(flipped))
    longer = job_config(tmp_path, data, "damaged", train={"tokens": 12 * 8 * 32})
    proc = train(longer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: resuming from {ckpts / 'step00000004'}, the newest intact checkpoint" in proc.stderr
    assert f"{ckpts / 'step00000008' / victim.name}: sha256 differs from the one recorded at save" in proc.stderr
    assert f"resumed from {ckpts / 'step00000004'} at step 4" in proc.stdout
    assert (ckpts / "corrupt-step00000008" / victim.name).read_bytes() == bytes(flipped)  # kept, not deleted
    for tag in ("step00000008", "step00000012"):  # now damage every checkpoint: nothing to resume from
        for path in (ckpts / tag).glob("*optim_states.pt"):
            path.write_bytes(path.read_bytes()[:100])
    (ckpts / "step00000004" / "trainer_state.json").unlink()
    proc = train(job_config(tmp_path, data, "damaged", train={"tokens": 16 * 8 * 32}))
    assert proc.returncode == 2 and "no intact checkpoint to resume from" in proc.stderr
    assert "truncated or overwritten" in proc.stderr and "trainer_state.json: missing" in proc.stderr


def test_latest_skips_an_incomplete_save(tmp_path):
    from pipeline.checkpoint.step_folders import COMPLETE, latest_tag

    for step in (4, 8):
        (tmp_path / f"step{step:08d}").mkdir()
    (tmp_path / "step00000004" / COMPLETE).write_text("")
    (tmp_path / "latest").write_text("step00000008")  # crashed after the pointer? never: but be safe
    assert latest_tag(tmp_path) == "step00000004"
    assert latest_tag(tmp_path / "nothing") is None


def test_eval_command_matches_the_trainers_final_evaluation_and_wandb_logs_offline(tmp_path, data):
    import json

    from helpers.process import cli

    # DP=2 and an odd batch count: the trainer deals the same 3 micro-batches over its ranks
    config = job_config(
        tmp_path,
        data,
        "evaluated",
        train={"tokens": 4 * 8 * 32},
        logging={"wandb_mode": "offline"},
        eval={"max_batches": 3},
    )
    trained = train(config, 2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    for noise in ("all_gather_into_tensor", "Transformer Engine", "FutureWarning"):  # silenced: nothing to act on
        assert noise not in trained.stderr, noise
    assert list((tmp_path / "evaluated" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "evaluated" / "config.resolved.yaml").exists()
    final = [r for r in metrics(tmp_path / "evaluated") if "val_loss" in r][-1]
    proc = cli("eval", str(config))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert result["val_ppl"] > 1 and result["tokens"] > 0


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, data, monkeypatch):
    """Losses, grad norms and stream weights stay on the device between logging steps: no
    ``.item()``/``.tolist()``/``float()``/``bool()`` of a tensor from our code in ``train_step``
    (ZeRO 1, ParScale P=2); the logging step then reads the whole window once."""
    import sys

    from pipeline.config import load_config
    from pipeline.distributed import destroy_distributed, init_distributed
    from pipeline.distributed.runtime import LAUNCHER_VARS
    from pipeline.training.trainer import Trainer

    for key in LAUNCHER_VARS:
        monkeypatch.delenv(key, raising=False)
    config = job_config(
        tmp_path, data, "nosync", parscale={"streams": 2, "prefix_len": 4}, logging={"interval_steps": 100}
    )
    loaded = load_config(config)
    trainer = Trainer.from_loaded(loaded, init_distributed(loaded.config, loaded.error))
    ours = str(REPO / "pipeline")
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ours):
                reads.append(f"{name} at {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)

    try:
        for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
            counting(name)
        for _ in range(3):
            trainer.train_step()
        assert reads == []
        trainer.resolve()
        assert len(reads) == 1 and "tolist" in reads[0]  # one read for the three steps
        assert [o.step for o in [trainer.last]] == [3] and trainer.skipped == 0
        assert math.isfinite(trainer.progress.window_loss) and trainer.progress.window_n == 3
    finally:
        monkeypatch.undo()
        destroy_distributed()
