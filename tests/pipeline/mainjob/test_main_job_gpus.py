"""``parscale run`` without ``parallel.data_parallel_size``: on GPUs (``torch.cuda`` patched to
report 4 on this CPU machine) each training stage takes every visible GPU in whole TP groups; on
the CPU it stays one TP group (one process: in the job's own process), as before."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers.process import cli
from helpers.training import TINY_MODEL


def _job(root, tp: int):
    cfg = {
        "run": {"name": "gpus", "output_dir": str(root / "job"), "seed": 3},
        "data": {"sources": [{"type": "stdlib", "glob": "json/*.py"}], "output_dir": str(root / "job" / "data")},
        "tokenizer": {"vocab_size": 400, "sample_docs": 40},
        "packing": {"seq_len": 32},
        "model": dict(TINY_MODEL),
        "parallel": {"tensor_parallel_size": tp, "micro_batch_size": 1, "global_batch_size": 8},
        "train": {"tokens": 6 * 8 * 32},
        "logging": {"wandb_mode": "disabled"},
        "stage2": {"parscale": {"streams": 2, "prefix_len": 4}, "tokens": 3 * 8 * 32},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dry_run(config) -> str:
    proc = cli("run", str(config), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("tp,nproc", [(1, 4), (2, 4)])
def test_on_gpus_each_stage_takes_every_visible_gpu(tmp_path, monkeypatch, tp, nproc):
    config = _job(tmp_path, tp)
    cpu = _dry_run(config)
    assert ("parscale train" in cpu and "(in this process)" in cpu) if tp == 1 else "--nproc_per_node=2" in cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    gpu = _dry_run(config)
    launches = [line for line in gpu.splitlines() if "pipeline.cli train" in line]
    assert len(launches) >= 2 and "(in this process)" not in gpu  # stage 1, stage 2, the control
    assert all(f"--nproc_per_node={nproc} --standalone" in line for line in launches), launches
    assert f"{nproc} process(es) per training stage" in gpu
