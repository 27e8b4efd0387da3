"""Whole prep jobs on a real (local) Ray runtime: every input type in one job, bad-input
accounting, both packings read back through megatron-core, determinism, resume, early refusals."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import yaml
from helpers.corpus import text_doc, write_bad_jsonl, write_hf_disk, write_jsonl, write_parquet, write_tree
from helpers.paths import REPO

from data_prep.filters import content_hash, is_validation, normalize
from data_prep.manifest import ManifestError, read_manifest, verify_tokenizer
from data_prep.prepare import PrepError, prepare
from data_prep.progress import Reporter
from data_prep.ray_runtime import ray_session
from data_prep.shards import ShardReader
from data_prep.tokenize_units import DamagedUnit
from pipeline.config import load_config

QUIET = Reporter(enabled=False)


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    with ray_session(None, 2):
        yield


def _config(tmp_path: Path, out: Path, sources: list[dict], **sections) -> Path:
    cfg = {
        "data": {
            "sources": sources,
            "output_dir": str(out),
            "val_fraction": 0.1,
            "unit_mb": 0.002,
            **sections.pop("data", {}),
        },
        "tokenizer": {"vocab_size": 400, "sample_docs": 200, **sections.pop("tokenizer", {})},
        "packing": {"seq_len": 63, "strategy": "concat", "sequences_per_shard": 16, **sections.pop("packing", {})},
        **sections,
    }
    path = tmp_path / f"prep-{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _read_split(out: Path, manifest: dict, source: str, split: str) -> list[tuple[np.ndarray, list[int]]]:
    (src,) = [s for s in manifest["sources"] if s["name"] == source]
    rows = []
    for shard in src["splits"][split]["shards"]:
        reader = ShardReader(out / shard["prefix"])
        rows += [reader.row(i) for i in range(len(reader))]
    return rows


def _expected_docs(out: Path, texts: list[str], split: str, val_fraction: float = 0.1) -> list[np.ndarray]:
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    docs = []
    for text in texts:
        text = normalize(text)
        if is_validation(content_hash(text), val_fraction) == (split == "val"):
            docs.append(np.array(sp.encode(text) + [sp.eos_id()]))
    return docs


@pytest.fixture(scope="module")
def mixed_job(tmp_path_factory):
    """One job over every input type, dedup on, with bad records in the JSONL."""
    tmp = tmp_path_factory.mktemp("mixed")
    jsonl_docs = [text_doc(i) for i in range(120)] + [text_doc(5)]  # one exact duplicate
    write_jsonl(tmp / "in" / "a.jsonl", jsonl_docs)
    bad_lines = write_bad_jsonl(tmp / "in" / "b.jsonl")
    sources = [
        {"type": "jsonl", "name": "web", "path": str(tmp / "in"), "weight": 2.0},
        {
            "type": "parquet",
            "path": str(write_parquet(tmp / "p.parquet", [text_doc(i) for i in range(200, 260)])),
            "text_field": "content",
        },
        {"type": "code", "path": str(write_tree(tmp / "code", [text_doc(i) for i in range(300, 340)], ".py"))},
        {"type": "text", "path": str(write_tree(tmp / "txt", [text_doc(i) for i in range(400, 420)], ".txt"))},
        {"type": "hf_disk", "path": str(write_hf_disk(tmp / "ds", [text_doc(i) for i in range(500, 560)]))},
        {"type": "stdlib", "glob": "json/*.py"},
    ]
    out = tmp / "out"
    loaded = load_config(_config(tmp, out, sources, data={"dedup": True}))
    manifest = prepare(loaded, QUIET)
    return {
        "out": out,
        "manifest": manifest,
        "jsonl_docs": jsonl_docs,
        "bad_lines": bad_lines,
        "tmp": tmp,
        "loaded": loaded,
    }


def test_manifest_accounts_for_every_record(mixed_job):
    m = mixed_job["manifest"]
    assert [s["name"] for s in m["sources"]] == ["web", "parquet-p", "code-code", "text-txt", "hf_disk-ds", "stdlib"]
    for src in m["sources"]:
        assert src["documents"]["read"] == src["documents"]["kept"] + src["documents"]["rejected"]
    web = m["sources"][0]
    assert web["weight"] == 2.0
    counts = web["rejected"]["counts"]
    # duplicates: doc 5 repeated in a.jsonl, and b.jsonl's two good lines repeat docs 1 and 2
    assert counts == {
        "duplicate": 3,
        "invalid_utf8": 1,
        "malformed_json": 1,
        "missing_field": 2,
        "not_text": 1,
        "too_short": 1,
    }
    b = mixed_job["tmp"] / "in" / "b.jsonl"
    assert web["rejected"]["examples"]["missing_field"] == [f"{b}:3", f"{b}:9"]
    a = mixed_job["tmp"] / "in" / "a.jsonl"
    assert web["rejected"]["examples"]["duplicate"] == [f"{a}:121", f"{b}:1", f"{b}:8"]
    assert web["documents"]["kept"] == 120
    assert m["totals"]["documents_rejected"] == sum(s["documents"]["rejected"] for s in m["sources"])
    assert m["tokenizer"]["sha256"] and m["token_dtype"] == "uint16" and m["row_len"] == 64
    assert m["config"]["data"]["dedup"] is True
    assert (mixed_job["out"] / "config.resolved.yaml").exists()


def test_concat_shards_hold_every_kept_token_once_in_order(mixed_job):
    out, m = mixed_job["out"], mixed_job["manifest"]
    texts = mixed_job["jsonl_docs"][:120]  # b.jsonl's good lines are duplicates
    for split in ("train", "val"):
        rows = _read_split(out, m, "web", split)
        expected = _expected_docs(out, texts, split)
        assert np.array_equal(np.concatenate([r[0] for r in rows]), np.concatenate(expected))
        assert all(len(t) == 64 for t, _ in rows[:-1])
        eod = m["tokenizer"]["eos_id"]
        ends = np.cumsum([len(d) for d in expected]).tolist()
        position = 0
        for tokens, segments in rows:  # a segment ends at a document end (EOD) or at the row's edge
            for k, seg in enumerate(segments):
                position += seg
                if k < len(segments) - 1:
                    assert position in ends and tokens[sum(segments[: k + 1]) - 1] == eod
    stats = m["sources"][0]["splits"]["train"]
    assert stats["tokens"] == sum(len(d) for d in _expected_docs(out, texts, "train"))


def test_validation_split_is_by_content_hash(mixed_job):
    m = mixed_job["manifest"]
    total_val = sum(s["splits"]["val"]["documents"] for s in m["sources"])
    total = sum(s["documents"]["kept"] for s in m["sources"])
    assert 0 < total_val < total * 0.3


def test_best_fit_job_keeps_documents_whole(tmp_path):
    docs = [text_doc(i, n_words=3 + (i * 13) % 40) for i in range(300)]
    write_jsonl(tmp_path / "a.jsonl", docs)
    out = tmp_path / "bf"
    m = prepare(
        load_config(
            _config(
                tmp_path,
                out,
                [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}],
                packing={"strategy": "best_fit", "best_fit_window": 64},
            )
        ),
        QUIET,
    )
    (src,) = m["sources"]
    for split in ("train", "val"):
        rows = _read_split(out, m, src["name"], split)
        expected = _expected_docs(out, docs, split)
        pieces = sorted((tuple(t[sum(s[:k]) : sum(s[: k + 1])]) for t, s in rows for k in range(len(s))))
        whole = sorted(tuple(d) for d in expected if len(d) <= 64)
        assert src["splits"][split]["truncated_documents"] == sum(len(d) > 64 for d in expected)
        if src["splits"][split]["truncated_documents"] == 0:
            assert pieces == whole
        assert all(len(t) <= 64 for t, _ in rows)
        assert sum(len(t) for t, _ in rows) == sum(len(d) for d in expected)
    assert src["splits"]["train"]["padding_fraction"] < 0.1


def test_same_inputs_give_byte_identical_outputs(tmp_path, mixed_job):
    first = mixed_job["out"]
    again = tmp_path / "again"
    shutil.copytree(first, again)
    shutil.rmtree(first)
    try:
        prepare(mixed_job["loaded"], QUIET)
        _assert_same_tree(again, first)
    finally:
        if not first.exists():
            shutil.copytree(again, first)


def _outputs(root: Path) -> list[Path]:
    """Output files (relative), without the resumable state in work/."""
    rel = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return sorted(r for r in rel if r.parts[0] != "work")


def _assert_same_tree(a: Path, b: Path, same_config: bool = True) -> None:
    """Byte-identical outputs; with ``same_config=False`` the runs' configs may differ in where they
    ran and wrote (output_dir, ray_address), so the config copies are left out of the comparison."""
    files_a, files_b = _outputs(a), _outputs(b)
    assert files_a == files_b and len(files_a) > 5
    for rel in files_a:
        if not same_config and rel.name in ("manifest.json", "config.resolved.yaml"):
            continue
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    if not same_config:
        ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
        ma.pop("config"), mb.pop("config")
        assert ma == mb


def test_rerun_rewrites_only_missing_shards(tmp_path):
    docs = [text_doc(i) for i in range(400)]
    write_jsonl(tmp_path / "a.jsonl", docs)
    out = tmp_path / "o"
    loaded = load_config(_config(tmp_path, out, [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]))
    m = prepare(loaded, QUIET)
    shards = m["sources"][0]["splits"]["train"]["shards"]
    assert len(shards) >= 3
    keep, lost = out / f"{shards[0]['prefix']}.bin", out / f"{shards[-1]['prefix']}.bin"
    before = keep.stat().st_mtime_ns
    reference = {out / p: (out / p).read_bytes() for p in _outputs(out)}
    assert len(reference) > 5
    lost.unlink()
    (out / "manifest.json").unlink()
    time.sleep(0.01)
    prepare(loaded, QUIET)
    assert keep.stat().st_mtime_ns == before  # finished shards are not rewritten
    assert {p: p.read_bytes() for p in reference} == reference


def test_job_killed_midway_resumes_to_the_same_outputs(tmp_path):
    docs = [text_doc(i, n_words=200) for i in range(1500)]
    write_jsonl(tmp_path / "a.jsonl", docs)
    src = [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]
    reference = tmp_path / "ref"
    prepare(load_config(_config(tmp_path, reference, src, data={"unit_mb": 0.02})), QUIET)

    out = tmp_path / "killed"
    config = _config(tmp_path, out, src, data={"unit_mb": 0.02})
    cmd = [str(Path(sys.executable).parent / "parscale"), "prep", str(config)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    units = out / "work" / "units"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(units.glob("*.npz"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in units.glob("*.npz")}
    assert done_before and not (out / "manifest.json").exists()
    total_units = read_manifest(reference)["sources"][0]["units"]
    assert len(done_before) < total_units

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for name, mtime in done_before.items():  # finished units were not tokenized again
        assert (units / name).stat().st_mtime_ns == mtime
    _assert_same_tree(reference, out, same_config=False)


def test_a_damaged_or_pickled_unit_file_is_named_and_never_unpickled(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", [text_doc(i) for i in range(120)])
    out = tmp_path / "o"
    loaded = load_config(_config(tmp_path, out, [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]))
    prepare(loaded, QUIET)
    unit = sorted((out / "work" / "units").glob("*.npz"))[0]
    ran = []
    monkeypatch.setattr(os, "_payload_ran", ran, raising=False)

    class Payload:
        def __reduce__(self):
            return (eval, ("__import__('os')._payload_ran.append(1)",))

    np.savez(unit, meta=np.array([Payload()], dtype=object))  # a planted pickle where a unit was
    shutil.rmtree(out / "train")
    (out / "manifest.json").unlink()
    with pytest.raises(DamagedUnit, match=rf"{unit}: not a readable tokenized unit \(ValueError: Object arrays"):
        prepare(loaded, QUIET)
    assert ran == []
    unit.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DamagedUnit, match=rf"{unit}: not a readable tokenized unit .*delete it and rerun"):
        prepare(loaded, QUIET)
    unit.unlink()  # as the message says: only that unit is tokenized again
    assert prepare(loaded, QUIET)["totals"]["documents_kept"] == 120


def test_changed_config_in_same_output_dir_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [text_doc(i) for i in range(50)])
    out = tmp_path / "o"
    src = [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]
    prepare(load_config(_config(tmp_path, out, src)), QUIET)
    with pytest.raises(PrepError, match=r"holds a prep job with a different config \(changed: packing.seq_len\)"):
        prepare(load_config(_config(tmp_path, out, src, packing={"seq_len": 127})), QUIET)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"tokenizer": {"vocab_size": 70000}, "packing": {"token_dtype": "uint16"}},
            r"packing.token_dtype: uint16 holds ids up to 65535, but the vocabulary has 70000",
        ),
        (
            {"sources": [{"type": "jsonl", "path": "/nonexistent.jsonl"}]},
            r"data.sources\[0\].path: input path does not exist",
        ),
        ({"sources": "empty"}, "no document passes the filters"),
        ({"tokenizer": {"model_path": "/nonexistent.model"}}, "tokenizer.model_path: /nonexistent.model: no such file"),
    ],
)
def test_bad_jobs_are_refused_before_work_starts(tmp_path, change, message):
    write_jsonl(tmp_path / "a.jsonl", [text_doc(i) for i in range(20)])
    sources = change.pop("sources", [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}])
    if sources == "empty":
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "x.jsonl").write_text("")
        sources = [{"type": "jsonl", "path": str(tmp_path / "e")}]
    out = tmp_path / "o"
    with pytest.raises(PrepError, match=message):
        prepare(load_config(_config(tmp_path, out, sources, **change)), QUIET)
    assert not list(out.glob("**/*.bin")) and not (out / "manifest.json").exists()


def test_all_documents_rejected_is_an_error_with_the_accounting_kept(mixed_job, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["short"] * 5)
    out = tmp_path / "o"
    config = _config(
        tmp_path,
        out,
        [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}],
        data={"min_chars": 100},
        tokenizer={"model_path": str(mixed_job["out"] / "tokenizer.model")},
    )
    with pytest.raises(PrepError, match="every document was rejected"):
        prepare(load_config(config), QUIET)
    assert read_manifest(out)["totals"]["rejected_by_reason"] == {"too_short": 5}


def test_training_refuses_data_from_another_tokenizer(mixed_job, tmp_path):
    out = mixed_job["out"]
    verify_tokenizer(out, out / "tokenizer.model")  # its own: fine
    other = tmp_path / "o"
    write_jsonl(tmp_path / "z.jsonl", [f"zzz {i} qqq" * 5 for i in range(50)])
    prepare(
        load_config(
            _config(
                tmp_path, other, [{"type": "jsonl", "path": str(tmp_path / "z.jsonl")}], tokenizer={"vocab_size": 300}
            )
        ),
        QUIET,
    )
    with pytest.raises(ManifestError, match="data was tokenized with tokenizer sha256"):
        verify_tokenizer(out, other / "tokenizer.model")


def test_existing_tokenizer_is_adopted(mixed_job, tmp_path):
    model = mixed_job["out"] / "tokenizer.model"
    write_jsonl(tmp_path / "a.jsonl", [text_doc(i) for i in range(30)])
    out = tmp_path / "o"
    m = prepare(
        load_config(
            _config(
                tmp_path,
                out,
                [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}],
                tokenizer={"model_path": str(model)},
            )
        ),
        QUIET,
    )
    assert m["tokenizer"]["sha256"] == mixed_job["manifest"]["tokenizer"]["sha256"]
    verify_tokenizer(out, model)


@pytest.mark.multiprocess
def test_slurm_prep_script_runs_on_its_ray_cluster_with_the_same_outputs(tmp_path):
    """launch/slurm/prep.sbatch for real on one node (srun stand-in): Ray head started, prep attached
    to it by data.ray_address, the same shards as a local run, and the cluster stopped at the end."""
    from helpers.launch import LAUNCH, clean_env, fake_slurm

    from pipeline.distributed.runtime import free_port

    write_jsonl(tmp_path / "a.jsonl", [text_doc(i) for i in range(200)])
    src = [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]
    local = tmp_path / "local"
    prepare(load_config(_config(tmp_path, local, src)), QUIET)

    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # unix socket paths must stay under 107 bytes
    bin_dir = fake_slurm(tmp_path / "bin")
    env = clean_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        SLURM_JOB_NODELIST="127.0.0.1",
        SLURM_JOB_ID="9",
        RAY_PORT=str(port),
        RAY_TEMP_DIR=ray_tmp,
        CPUS_PER_NODE="2",
    )
    remote = tmp_path / "remote"
    config = _config(tmp_path, remote, src)
    try:
        proc = subprocess.run(
            [str(LAUNCH / "slurm/prep.sbatch"), str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=400,
            env=env,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "1 node(s) alive" in proc.stdout and "stopping the Ray cluster" in proc.stdout
        left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout.split()
        assert not left, f"Ray processes left running: {left}"
    finally:
        subprocess.run(["pkill", "-f", ray_tmp])
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert yaml.safe_load((remote / "config.resolved.yaml").read_text())["data"]["ray_address"] == f"127.0.0.1:{port}"
    _assert_same_tree(local, remote, same_config=False)


def test_stripped_control_characters_are_counted_and_an_older_folder_is_named(mixed_job, tmp_path):
    docs = [text_doc(i) for i in range(30)]
    docs[3], docs[7] = "NUL\x00" + docs[3], "\x1b[1m" + docs[7]
    write_jsonl(tmp_path / "a.jsonl", docs)
    src = [{"type": "jsonl", "path": str(tmp_path / "a.jsonl")}]
    model = {"model_path": str(mixed_job["out"] / "tokenizer.model")}
    out = tmp_path / "o"
    manifest = prepare(load_config(_config(tmp_path, out, src, tokenizer=model)), QUIET)
    assert manifest["totals"]["stripped_by_filter"] == {"control_chars": 2}
    assert manifest["sources"][0]["stripped"]["examples"]["control_chars"] == [
        f"{tmp_path / 'a.jsonl'}:{i}" for i in (4, 8)
    ]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    text = "".join(
        sp.decode(row[row != sp.eos_id()].tolist())
        for split in ("train", "val")
        for row, _ in _read_split(out, manifest, "jsonl-a", split)
    )
    assert "\x00" not in text and "\x1b" not in text and "NUL" + docs[3][4:] in text

    # a folder prepared before the filter existed (its job has no control_chars: 'keep' is left out)
    older = tmp_path / "older"
    keep = _config(tmp_path, older, src, tokenizer=model, data={"control_chars": "keep"})
    prepare(load_config(keep), QUIET)
    assert "control_chars" not in json.loads((older / "work" / "job.json").read_text())["data"]
    assert "\x00" in "".join(
        sp.decode(r.tolist())
        for s in ("train", "val")
        for r, _ in _read_split(older, read_manifest(older), "jsonl-a", s)
    )
    with pytest.raises(
        PrepError,
        match=r"changed: data.control_chars\); use another output_dir or delete this "
        r"one, or set data.control_chars: keep to use it as it was prepared",
    ):
        prepare(load_config(_config(tmp_path, older, src, tokenizer=model)), QUIET)
