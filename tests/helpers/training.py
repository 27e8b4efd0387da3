"""Shared pieces of the training tests: a small prepared dataset, job configs, and running
``parscale train`` as one process or under torchrun, or the trainer on spawned ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from .multirank import run_ranks
from .paths import REPO
from .process import run_cli

PARSCALE = str(Path(sys.executable).parent / "parscale")


def prepare_data(root: Path) -> Path:
    """A tiny prepared dataset (stdlib json package, seq_len 32, vocab ~400), via the CLI."""
    out = root / "data"
    cfg = {
        "data": {
            "sources": [
                {"type": "stdlib", "glob": "json/*.py"},
                {"type": "stdlib", "name": "encodings", "glob": "encodings/[a-c]*.py"},
            ],
            "output_dir": str(out),
            "val_fraction": 0.2,
        },
        "tokenizer": {"vocab_size": 400, "sample_docs": 60},
        "packing": {"seq_len": 32, "strategy": "concat"},
    }
    path = root / "prep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli("prep", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


#: the model section of the training tests' jobs: 2 layers x 32, GQA 4/2, up to 64 tokens
TINY_MODEL = {
    "num_layers": 2,
    "hidden_size": 32,
    "ffn_hidden_size": 64,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "max_seq_len": 64,
    "pad_vocab_to_multiple_of": 8,
}


def job_config(root: Path, data: Path, name: str, **sections) -> Path:
    cfg = {
        "run": {"name": name, "output_dir": str(root / name), "seed": 7},
        "data": {"output_dir": str(data)},
        "packing": {"seq_len": 32},
        "model": dict(TINY_MODEL),
        "parallel": {"micro_batch_size": 2, "global_batch_size": 8},
        "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_tokens": 256},
        "train": {"tokens": 8 * 32 * 8},  # 8 steps
        "checkpoint": {"interval_steps": 4, "keep_last": 3},
        "eval": {"interval_steps": 0, "max_batches": 2},
        "logging": {"interval_steps": 1, "wandb_mode": "disabled"},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_command(config: Path, nproc: int) -> list[str]:
    if nproc == 1:
        return [PARSCALE, "train", str(config)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pipeline.cli",
        "train",
        str(config),
    ]


def train(config: Path, nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        train_command(config, nproc), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def train_job(config: str) -> dict:
    """One rank of a training run (for ``run_ranks``): the trainer of ``config``, run to the end."""
    from pipeline.config import load_config
    from pipeline.training.train import train

    return train(load_config(config))


def train_ranks(config: Path, nproc: int) -> list[dict]:
    """The training run of ``config`` on ``nproc`` spawned ranks (no launcher, no CLI start-up); each
    rank's result. The launcher and CLI paths have tests of their own (kill -9, signals, eval)."""
    return run_ranks(train_job, nproc, str(config), timeout=600)
