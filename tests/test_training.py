"""The trainer end to end on a tiny model: ZeRO stages against a plain PyTorch AdamW loop, exact
resume after kill -9 (TP=2 x DP=2, ZeRO 1 and 3), frozen backbone, stage 1 -> stage 2, signals,
non-finite steps, refused checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from train_helpers import job_config, metrics, prepare_data, step_losses, train, train_command


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(tmp_path_factory.mktemp("train-data"))


def _plain_pytorch_losses(config_path, steps: int) -> list[float]:
    """The same job as a plain loop: full global batch in one process, torch AdamW, same clipping."""
    from pipeline.config import load_config
    from pipeline.data.loader import SplitStream, collate, micro_batch_start
    from pipeline.distributed import single_process
    from pipeline.model import ParScaleLM
    from pipeline.training.optim import param_groups
    from pipeline.training.schedule import WSD
    from data_prep.manifest import read_manifest

    cfg = load_config(config_path).config
    manifest = read_manifest(cfg.data.output_dir)
    par, seq = cfg.parallel, manifest["seq_len"]
    dp = par.data_parallel_size or 2
    gas = par.grad_accum_steps(dp)
    losses = []
    with single_process():
        torch.manual_seed(cfg.run.seed)
        model = ParScaleLM(cfg.model, cfg.parscale, manifest["tokenizer"]["vocab_size"])
        opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas,
                                eps=cfg.optimizer.eps)
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
    config = job_config(tmp_path, data, f"zero{stage}", parallel={"zero_stage": stage, "data_parallel_size": 2},
                        train={"tokens": 4 * 8 * 32})
    proc = train(config, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = step_losses(tmp_path / f"zero{stage}")
    expected = _plain_pytorch_losses(config, 4)
    assert [round(got[s + 1], 4) for s in range(4)] == pytest.approx([round(x, 4) for x in expected], abs=2e-4)
    assert expected[-1] < expected[0]


def _kill_after_checkpoint(config, nproc: int, ckpt_dir, step: int) -> None:
    proc = subprocess.Popen(train_command(config, nproc), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    marker = ckpt_dir / f"step{step:08d}" / "COMPLETE"
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached its first checkpoint"


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [1, 3])
def test_kill_9_and_resume_is_exact_at_tp2_dp2(tmp_path, data, stage):
    par = {"zero_stage": stage, "tensor_parallel_size": 2, "data_parallel_size": 2}
    whole = job_config(tmp_path, data, "whole", parallel=par, parscale={"streams": 2, "prefix_len": 4})
    assert train(whole, nproc=4).returncode == 0
    broken = job_config(tmp_path, data, "broken", parallel=par, parscale={"streams": 2, "prefix_len": 4})
    _kill_after_checkpoint(broken, 4, tmp_path / "broken" / "checkpoints", 4)
    resumed = train(broken, nproc=4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a, b = step_losses(tmp_path / "whole"), step_losses(tmp_path / "broken")
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]  # bitwise: fp32 on CPU
    wa = load_file(str(tmp_path / "whole" / "portable" / "model.safetensors"))
    wb = load_file(str(tmp_path / "broken" / "portable" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
