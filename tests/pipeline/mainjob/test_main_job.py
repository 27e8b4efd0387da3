"""``parscale run``: the whole pipeline in a fast mode (tiny corpus and model, a few steps per
stage, 2 processes), its report, the rerun that skips every finished stage, the README's commands
on its output, and the dry run."""

from __future__ import annotations

import json
import math
import re
import shlex
import time

import pytest
import yaml
from helpers.paths import REPO
from helpers.process import cli, run_cli
from helpers.training import TINY_MODEL, metrics


def _job(root, **extra):
    cfg = {
        "run": {"name": "fast", "output_dir": str(root / "job"), "seed": 3},
        "data": {
            "sources": [{"type": "stdlib", "glob": "json/*.py"}],
            "output_dir": str(root / "job" / "data"),
            "val_fraction": 0.2,
        },
        "tokenizer": {"vocab_size": 400, "sample_docs": 40},
        "packing": {"seq_len": 32},
        "model": dict(TINY_MODEL),
        "parallel": {"tensor_parallel_size": 1, "data_parallel_size": 2, "micro_batch_size": 2, "global_batch_size": 8},
        "optimizer": {"lr": 3e-3},
        "train": {"tokens": 6 * 8 * 32},
        "checkpoint": {"interval_steps": 3},
        # the downstream smoke tasks, 2 documents each: at the end of each training run and on each final model
        "eval": {
            "interval_steps": 3,
            "max_batches": 2,
            "tasks": ["parscale_smoke"],
            "tasks_limit": 2,
            "tasks_interval_steps": 0,
        },
        "logging": {"interval_steps": 1, "wandb_mode": "disabled"},
        "stage2": {"parscale": {"streams": 2, "prefix_len": 4}, "tokens": 3 * 8 * 32, "prefix_control": True},
    } | extra
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    """One ``parscale run`` of the fast job for the module: (its config, the finished process). Its
    checkpoints go to a folder of their own (``checkpoint.dir``, as on a cluster's scratch disk)."""
    root = tmp_path_factory.mktemp("main-job")
    config = _job(root, checkpoint={"interval_steps": 3, "dir": str(root / "scratch")})
    proc = run_cli("run", str(config), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return config, proc


@pytest.mark.multiprocess
def test_the_whole_pipeline_produces_the_report_and_a_rerun_skips_finished_stages(finished_job, tmp_path):
    config, proc = finished_job
    job = config.parent / "job"
    report = job / "report" / "report.md"
    assert f"report: {report}" in proc.stdout.replace("\n", "")
    text = report.read_text()
    assert (
        "stage 2 (ParScale P=2)" in text
        and "stage 2 dense control" in text
        and "![training and validation loss](loss.png)" in text
    )
    assert (job / "report" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evals = json.loads((job / "eval.json").read_text())
    assert set(evals) == {"stage1", "stage2-p2", "dense", "prefix1"}
    assert "Against one learned prefix (P=1 + prefix, same tokens), ParScale P=2 ends" in text
    control = json.loads((job / "stage2-p1-prefix" / "portable" / "config.json").read_text())
    assert control["parscale"]["single_prefix"] and control["parscale"]["streams"] == 1
    assert evals["stage2-p2"]["streams"] == 2 and evals["dense"]["streams"] == 1
    assert evals["stage1"]["tokens_seen"] == 6 * 8 * 32 and evals["stage2-p2"]["tokens_seen"] == 3 * 8 * 32
    for stage in ("stage1", "stage2-p2", "stage2-dense", "stage2-p1-prefix"):
        assert (job / stage / "portable" / "config.json").exists() and (job / stage / "job.yaml").exists()
        # checkpoint.dir: each run keeps its checkpoints in its own folder under it, none in the run folder
        assert (config.parent / "scratch" / stage / "latest").exists() and not (job / stage / "checkpoints").exists()
    stage2 = yaml.safe_load((job / "stage2-p2" / "job.yaml").read_text())
    assert stage2["train"]["skip_tokens"] is None  # the rule: the init's tokens_seen, stage 1's (6 steps)
    # every stage-2 run (P=2, dense control, one-prefix control) reads on after stage 1's data
    assert proc.stdout.count(f"data: from token {6 * 8 * 32:,} of the data order") == 3
    init = json.loads((job / "convert" / "stage2-init-p2" / "config.json").read_text())
    assert init["parscale"]["streams"] == 2 and "stage1-fp32" in init["converted_from"]
    # eval.tasks: each final model's downstream metrics in eval.json and the report's table; in training, at the end
    smoke = ("parscale_mc/acc", "parscale_ppl/bits_per_byte", "parscale_gen/exact_match")
    for result in evals.values():
        assert result["downstream"]["settings"] == {
            "tasks": ["parscale_smoke"],
            "limit": 2,
            "num_fewshot": None,
            "include_path": [],
        }
        assert (
            set(smoke) <= result["downstream"]["metrics"].keys() and 0 <= result["downstream"]["metrics"][smoke[0]] <= 1
        )
    table = text.split("## Downstream smoke check", 1)[1].split("## Stages", 1)[0]
    assert "a smoke check on the project's tiny offline tasks, not a benchmark" in table.lower()
    assert "| model | parscale_mc/acc | parscale_mc/acc_norm | parscale_ppl/word_perplexity |" in table
    for row in ("stage 1 (dense)", "stage 2 (ParScale P=2)", "stage 2 dense control", "stage 2 P=1 + one prefix"):
        assert f"| {row} | " in table
    for stage, steps in (("stage1", 6), ("stage2-p2", 3)):
        records = [r for r in metrics(job / stage) if r.get("kind") == "downstream"]
        assert [r["step"] for r in records] == [steps] and set(smoke) <= records[0].keys()

    again = cli("run", str(config))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skip") >= 8 and "torchrun_main" not in again.stdout
    assert report.exists()

    # parscale ablate on the same job: the main job is reused whole, only the variant trains
    cfg = yaml.safe_load(config.read_text()) | {
        "ablation": {"seeds": 1, "variants": [{"name": "lr-x10", "set": {"optimizer.parscale_lr_mult": 10}}]}
    }
    ablate = tmp_path / "ablate.yaml"
    ablate.write_text(yaml.safe_dump(cfg))
    trained = {p: p.stat().st_mtime_ns for p in job.glob("*/portable/model.safetensors")}
    proc = cli("ablate", str(ablate))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(trained) == 4 and {p: p.stat().st_mtime_ns for p in trained} == trained  # nothing retrained
    variant = job / "ablation" / "lr-x10-seed0"
    assert (config.parent / "scratch" / "ablation" / "lr-x10-seed0" / "stage2-p2" / "latest").exists()
    assert yaml.safe_load((variant / "stage2-p2" / "job.yaml").read_text())["optimizer"]["parscale_lr_mult"] == 10
    results = json.loads((job / "ablation" / "eval.json").read_text())
    assert set(results) == {"baseline-seed0", "lr-x10-seed0", "dense", "prefix1"}
    for key in ("baseline-seed0", "lr-x10-seed0"):
        assert math.isfinite(results[key]["diversity_gain"]) and -1 <= results[key]["update_cosine"] <= 1
    assert results["baseline-seed0"]["val_loss"] == pytest.approx(evals["stage2-p2"]["val_loss"])  # same batches
    assert "| lr-x10 | `optimizer.parscale_lr_mult=10` |" in (job / "ablation" / "report" / "ablation.md").read_text()

    finished = (job / "stage2-p2" / "portable" / "model.safetensors").read_bytes()
    changed = cli("run", str(config), "--set", "stage2.parscale.prefix_len=3")
    assert changed.returncode == 2 and f"{job / 'stage2-p2'} holds a run of another model" in changed.stderr
    assert (job / "stage2-p2" / "portable" / "model.safetensors").read_bytes() == finished


def _readme_demo_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks that names the demo's output (``runs/demo``),
    as arguments (comments dropped, continued lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(line, comments=True) for line in lines]
    return [args for args in commands if any("runs/demo" in a for a in args)]


def _on_job(arg: str, job, streams: int, scratch) -> str:
    """A README argument turned to the fast job's output: ``runs/demo`` -> the job's folder (so
    ``runs/demo-tp2`` is a sibling of it), ``/tmp/...`` -> a folder under ``scratch``, and the demo's
    P=4 stage-2 folders (``stage2-p4``) -> the fast job's P (its stage2.parscale.streams, 2)."""
    if "runs/demo" in arg:
        arg = re.sub(r"(stage2(?:-init)?)-p\d+\b", rf"\g<1>-p{streams}", arg.replace("runs/demo", str(job)))
    return re.sub(r"^/tmp/", f"{scratch}/", arg)


@pytest.mark.multiprocess
def test_the_readme_commands_on_the_demo_output_run_on_a_real_job_output(finished_job, tmp_path):
    config, _ = finished_job
    job = config.parent / "job"
    streams = yaml.safe_load(config.read_text())["stage2"]["parscale"]["streams"]
    commands = _readme_demo_commands()
    assert len(commands) >= 3, commands
    for args in commands:
        assert args[0] == ".venv/bin/parscale", f"not a parscale command, run it here too: {shlex.join(args)}"
        mapped = [_on_job(a, job, streams, tmp_path) for a in args[1:]]
        start = time.perf_counter()
        proc = cli(*mapped)
        assert proc.returncode == 0, f"{shlex.join(args)} -> {shlex.join(mapped)}\n{proc.stderr[-3000:]}"
        print(f"{time.perf_counter() - start:5.1f}s  {shlex.join(args)}")
        assert not [a for a in mapped if "runs/demo" in a or a.startswith("/tmp/")]
    assert (tmp_path / "stage1-portable" / "config.json").exists() and (tmp_path / "hf-parscale").is_dir()
    assert (job.parent / "job-tp2" / "checkpoints" / "latest").exists()


def test_dry_run_prints_each_stage_and_writes_nothing(tmp_path):
    config = _job(tmp_path)
    proc = cli("run", str(config), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        proc.stdout.count("pipeline.distributed.torchrun_main --nproc_per_node=2 --standalone -m pipeline.cli train")
        == 4
    )  # stage 1, P=2, dense control, one-prefix control
    assert "parscale convert consolidate" in proc.stdout and "--streams 2" in proc.stdout
    assert not (tmp_path / "job" / "stage1").exists() and not (tmp_path / "job" / "report").exists()


def test_a_config_without_stage2_is_refused_by_run(tmp_path):
    config = _job(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    del cfg["stage2"]
    config.write_text(yaml.safe_dump(cfg))
    proc = cli("run", str(config), "--dry-run")
    assert proc.returncode == 2 and "stage2" in proc.stderr and "required by 'run'" in proc.stderr


@pytest.mark.parametrize("error", ["write", "torch.save"])
def test_a_full_disk_in_any_stage_exits_2_naming_where(tmp_path, monkeypatch, capsys, error):
    import errno

    from pipeline import cli as cli_module
    from pipeline.mainjob.stages import MainJob
    from pipeline.utils import fs

    def full(_self):
        if error == "write":  # a write to an open file: the OS error carries no file name
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(fs, "NEARLY_FULL", 1 << 62)  # the disk reads as full
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(MainJob, "stages", lambda self: [("evaluation", lambda: False, lambda: full(self))])
    config = _job(tmp_path)
    assert cli_module.main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"parscale run: no space left on device: {tmp_path / 'job'}; free space and rerun" in err


def test_a_stage_whose_ranks_exit_2_says_the_reason_is_above(tmp_path, monkeypatch):
    from pipeline.distributed.launcher import TorchrunLaunch
    from pipeline.mainjob import stages

    monkeypatch.setattr(TorchrunLaunch, "run", lambda self, dry_run=False: 2)
    from pipeline.config import load_config

    loaded = load_config(_job(tmp_path))
    with pytest.raises(stages.UserError, match=r"stage1 training ended with exit 2 \(its reason is printed above\)"):
        stages.train_stage(loaded, "stage1", nproc=2, dry_run=False)


def test_the_main_job_takes_p_from_stage2_only(tmp_path):
    config = _job(tmp_path, parscale={"streams": 4})
    proc = cli("run", str(config), "--dry-run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "parscale.streams: 4, but stage 1 of 'parscale run' is dense; the P of stage 2 is" in proc.stderr
