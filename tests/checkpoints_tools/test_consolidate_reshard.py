"""Trainer checkpoints (DeepSpeed ZeRO files) -> portable (consolidate) and TP=a -> TP=b (reshard),
on real training runs: a ZeRO-3 TP=2 run against the same run at TP=1, a bf16 ZeRO-2 DP=2 run,
TP 1 -> 2 -> 1, resuming at the new TP, and the bad inputs each tool must refuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers.process import cli
from helpers.training import job_config, step_losses, train, train_ranks
from safetensors.torch import load_file

from checkpoints_tools.consolidate import consolidate
from checkpoints_tools.reshard import reshard
from pipeline.checkpoint import integrity
from pipeline.checkpoint.portable import CheckpointError
from pipeline.checkpoint.trainer_ckpt import TrainerCheckpoint

PARSCALE = {"streams": 2, "prefix_len": 4}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_data):
    root = tmp_path_factory.mktemp("runs")
    data = prepared_data
    specs = {
        "tp2": (2, {"parallel": {"tensor_parallel_size": 2, "zero_stage": 3}, "parscale": PARSCALE}),
        "tp1": (1, {"parallel": {"tensor_parallel_size": 1, "zero_stage": 3}, "parscale": PARSCALE}),
        "bf16": (2, {"parallel": {"zero_stage": 2, "precision": "bf16"}}),
    }
    for name, (nproc, sections) in specs.items():
        assert train_ranks(job_config(root, data, name, **sections), nproc)[0]["step"] == 8
    return root


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_zero3_tp2_consolidated_equals_the_same_run_at_tp1(runs, tmp_path):
    proc = cli("convert", "consolidate", str(runs / "tp2"), str(tmp_path / "tp2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert (result["tp"], result["zero_stage"], result["step"]) == (2, 3, 8)
    assert "TP=2 vs TP=1" in result["verified"] and result["replicated_drift"] == 0
    assert cli("convert", "verify", str(tmp_path / "tp2")).returncode == 0
    assert "TP=1 vs TP=1" in consolidate(runs / "tp1", tmp_path / "tp1")["verified"]
    a, b = _weights(tmp_path / "tp2"), _weights(tmp_path / "tp1")
    assert a.keys() == b.keys() and "model.layers.1.self_attn.prefix.prefix_k" in a
    for name in a:  # same data, seeds and init: TP only changes the order of sums
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=0, msg=name)
    exported = _weights(runs / "tp2" / "portable")  # gathered in-process by the trainer at the end
    assert all(torch.equal(a[k], exported[k]) for k in a)


def test_bf16_zero2_consolidates_the_fp32_masters(runs, tmp_path):
    result = consolidate(runs / "bf16", tmp_path / "out")
    assert (result["precision"], result["zero_stage"]) == ("bf16", 2)
    masters, exported = _weights(tmp_path / "out"), _weights(runs / "bf16" / "portable")
    assert all(v.dtype == torch.float32 for v in masters.values())
    assert any(not torch.equal(v, v.bfloat16().float()) for v in masters.values())  # more than bf16 holds
    # the run's own export holds the same masters, gathered in memory over its 2 ZeRO-2 partitions
    assert masters.keys() == exported.keys() and all(torch.equal(masters[k], exported[k]) for k in masters)


def test_reshard_tp1_to_2_to_1_is_identical_and_training_resumes_at_the_new_tp(runs, tmp_path, prepared_data):
    first = reshard(runs / "tp1", tmp_path / "tp2" / "checkpoints", 2)
    assert "TP=1 vs TP=2" in first["verified"]
    back = reshard(tmp_path / "tp2" / "checkpoints", tmp_path / "tp1" / "checkpoints", 1)
    assert "TP=2 vs TP=1" in back["verified"]
    original, returned = (
        TrainerCheckpoint(runs / "tp1").rank_state(0),
        TrainerCheckpoint(tmp_path / "tp1").rank_state(0),
    )
    assert original.keys() == returned.keys() and all(torch.equal(original[k], returned[k]) for k in original)
    halves = TrainerCheckpoint(tmp_path / "tp2")
    assert integrity.problems(halves.folder) == []  # reshard records its files too
    prefix = "model.layers.0.self_attn.prefix.prefix_k"
    assert halves.rank_state(1)[prefix].shape == (2, 1, 4, 8)  # prefixes cut by KV head
    assert torch.equal(halves.rank_state(1)[prefix], original[prefix][:, 1:])

    # the resharded checkpoint is a run folder's checkpoints: resume it at TP=2 (ZeRO 1 now) to step 12
    config = job_config(
        tmp_path,
        prepared_data,
        "tp2",
        parallel={"tensor_parallel_size": 2, "zero_stage": 1},
        parscale=PARSCALE,
        train={"tokens": 12 * 32 * 8},
    )
    proc = train(config, 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "Adam moments start afresh" in proc.stdout
    losses = step_losses(tmp_path / "tp2")
    assert sorted(losses) == [9, 10, 11, 12]
    assert losses[9] < step_losses(runs / "tp1")[1]  # it continued from trained weights, not from scratch


def test_resume_at_another_tp_points_at_reshard():
    from pathlib import Path

    from pipeline.errors import UserError
    from pipeline.training.checkpointing import check_compatible

    with pytest.raises(UserError, match="parscale convert reshard .* --tp 2"):
        check_compatible({"parallel.tensor_parallel_size": 1}, {"parallel.tensor_parallel_size": 2}, Path("ck/step1"))


def _copy_step(runs, name, tmp_path):
    folder = TrainerCheckpoint(runs / name).folder
    copy = tmp_path / name / folder.name
    shutil.copytree(folder, copy)
    return copy


def test_bad_trainer_checkpoints_are_refused_and_leave_nothing(runs, tmp_path):
    proc = cli("convert", "consolidate", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "nowhere: not found" in proc.stderr

    truncated = _copy_step(runs, "tp2", tmp_path / "a")
    optim = truncated / "zero_pp_rank_0_mp_rank_01_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:1000])
    legacy = _copy_step(runs, "tp2", tmp_path / "a2")  # a record made after the damage: the loader must tell
    (legacy / optim.name).write_bytes(optim.read_bytes())
    missing = _copy_step(runs, "bf16", tmp_path / "b")
    next(missing.glob("*zero_pp_rank_1_*optim_states.pt")).unlink()
    unrecorded = _copy_step(runs, "tp1", tmp_path / "u")  # lost its record: nothing in it can be checked
    (unrecorded / "files.json").unlink()
    incomplete = _copy_step(runs, "tp1", tmp_path / "c")
    (incomplete / "COMPLETE").unlink()
    mismatched = _copy_step(runs, "tp1", tmp_path / "d")
    config = mismatched / "config.resolved.yaml"
    config.write_text(config.read_text().replace("num_layers: 2", "num_layers: 3"))
    edited = _copy_step(runs, "tp1", tmp_path / "d2")
    (edited / config.name).write_text(config.read_text())
    hostile = _copy_step(runs, "bf16", tmp_path / "e")

    class Boom:  # a pickle that would run code when loaded
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    torch.save({"module": Boom()}, hostile / "mp_rank_00_model_states.pt")
    for folder in (legacy, missing, mismatched, hostile):
        integrity.record(folder)  # records consistent with the damage: what the loaders themselves catch
    from checkpoints_tools.inspect_ckpt import inspect, verify

    info = inspect(runs / "tp2")
    assert (info["tp"], info["zero_stage"], info["tokens_seen"], info["streams"]) == (2, 3, 2048, 2)
    assert verify(runs / "tp2") == [] and f"{optim}: 1000 bytes" in verify(truncated)[0]
    assert "config.resolved.yaml: sha256 differs from the one recorded at save" in verify(edited)[0]
    assert f"{unrecorded / 'files.json'}: missing" in verify(unrecorded)[0]
    cases = [
        (truncated, "damaged since it was saved: .*optim_states.pt: 1000 bytes"),
        (legacy, "corrupt or truncated"),
        (missing, "needs 2 ZeRO partitions, found 1"),
        (incomplete, "incomplete save"),
        (mismatched, "missing \\['model.layers.2"),
        (edited, "config.resolved.yaml: sha256 differs"),
        (hostile, "refused to unpickle"),
        (unrecorded, "files.json: missing"),
    ]
    for source, message in cases:
        target = tmp_path / "out" / source.parent.name
        with pytest.raises(CheckpointError, match=message):
            consolidate(source, target)
        assert not target.exists() and not list(target.parent.glob(".*")), source

    with pytest.raises(CheckpointError, match="TP=3 does not divide model.num_attention_heads=4"):
        reshard(runs / "tp1", tmp_path / "r3", 3)
    assert not (tmp_path / "r3").exists()


def test_converters_never_remove_what_they_did_not_write(runs, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("not a checkpoint")
    proc = cli("convert", "consolidate", str(runs / "tp1"), str(precious))
    assert proc.returncode == 2 and "is not an earlier portable checkpoint output" in proc.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    before = sorted(p.relative_to(runs / "tp1") for p in (runs / "tp1").rglob("*"))
    proc = cli("convert", "consolidate", str(runs / "tp1"), str(runs / "tp1"))  # the run itself
    assert proc.returncode == 2 and "the output folder is the source" in proc.stderr
    proc = cli("convert", "consolidate", str(runs / "tp1"), str(runs / "tp1" / "fp32"))
    assert proc.returncode == 2 and "the output folder is inside the source" in proc.stderr
    assert sorted(p.relative_to(runs / "tp1") for p in (runs / "tp1").rglob("*")) == before
    portable = runs / "tp1" / "portable"
    proc = cli("convert", "export-hf", str(portable), str(portable))
    assert proc.returncode == 2 and "the output folder is the source" in proc.stderr
    assert (portable / "model.safetensors").is_file()
    out = tmp_path / "again"
    for _ in range(2):  # its own earlier output is replaced
        assert cli("convert", "consolidate", str(runs / "tp1"), str(out), "--no-verify").returncode == 0
