"""The README's "From a Hugging Face checkpoint to a ParScale model", run as written on a tiny
stand-in for a pretrained model (a random Qwen2 and a byte-level BPE tokenizer, both made here):
import-hf -> parscale run (prep with the model's tokenizer, dense -> ParScale P=4, stage 2 with ZeRO 2
at TP=2, the dense control, evaluation) -> export-hf (dense qwen2 and qwen2_parscale) -> generate.
Then the dense export is loaded with AutoTokenizer + AutoModelForCausalLM: the same ids on 100
corpus snippets, the same validation loss as parscale eval (1e-5), the same greedy generation."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers.corpus import text_doc, write_jsonl
from helpers.hf_models import pretrained_folder
from helpers.paths import CONFIGS, REPO
from helpers.process import cli

from pipeline.config import load_config

HEADING = "## From a Hugging Face checkpoint to a ParScale model"
SHIPPED = "configs/stage2_from_hf.yaml"
STREAMS = 4


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"```bash\n(.*?)```", text[text.index(HEADING) :], flags=re.S).group(1)


def _corpus() -> list[str]:
    code = [f"def f{i}(x):\n    return x * {i} + {i % 7}  # step {i}\n" for i in range(60)]
    return [text_doc(i) for i in range(300)] + code


def _tiny_config(root: Path, run: Path, corpus: Path) -> Path:
    """The shipped config with test-sized overrides (the same keys a user edits)."""
    cfg = {
        "base": str(CONFIGS / "stage2_from_hf.yaml"),
        "run": {"name": "recipe", "output_dir": str(run), "seed": 5},
        "data": {
            "sources": [{"type": "jsonl", "path": str(corpus)}],
            "output_dir": str(run / "data"),
            "val_fraction": 0.1,
        },
        "tokenizer": {"model_path": str(run / "imported")},
        "packing": {"seq_len": 32},
        "parallel": {
            "tensor_parallel_size": 2,
            "data_parallel_size": 1,
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "precision": "fp32",
            "activation_checkpointing": False,
        },
        "optimizer": {"lr": 3e-3},
        "checkpoint": {"interval_steps": 100},
        "eval": {"interval_steps": 100, "max_batches": 3},
        "logging": {"interval_steps": 1, "wandb_mode": "disabled", "peak_flops": "1T"},
        "stage2": {
            "init_from": str(run / "imported"),
            "parscale": {"streams": STREAMS, "prefix_len": 4},
            "tokens": 5 * 4 * 32,
            "schedule": {"warmup_tokens": 0},
        },
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    docs = _corpus()
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    hf_model = pretrained_folder(root / "Qwen-tiny", docs)
    run = root / "run"
    config = _tiny_config(root, run, corpus)
    script = readme_block().replace(SHIPPED, str(config))
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    script = re.sub(r"^HF_MODEL=\S+", f"HF_MODEL={hf_model}", script, flags=re.M)
    script = re.sub(r"^RUN=\S+", f"RUN={run}", script, flags=re.M)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return {"run": run, "docs": docs, "hf_model": hf_model, "out": proc.stdout, "config": config}


@pytest.mark.multiprocess
def test_the_readme_recipe_runs_as_written_and_each_artefact_carries_the_tokenizer(recipe):
    run = recipe["run"]
    imported = json.loads((run / "imported" / "config.json").read_text())
    assert imported["tokenizer"]["kind"] == "hf" and imported["tokenizer"]["path"] == "tokenizer.json"
    ids = imported["tokenizer"]["vocab_size"]
    assert imported["vocab_size"] == -(-ids // 64) * 64  # the padded rows kept as imported (Qwen2.5: 151,936)
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == imported["tokenizer"]["sha256"]
    evals = json.loads((run / "eval.json").read_text())
    assert set(evals) == {"stage1", f"stage2-p{STREAMS}", "dense"}
    assert evals[f"stage2-p{STREAMS}"]["streams"] == STREAMS
    stage2 = yaml.safe_load((run / f"stage2-p{STREAMS}" / "job.yaml").read_text())
    assert stage2["parallel"]["tensor_parallel_size"] == 2 and stage2["parallel"]["zero_stage"] == 2
    parscale = json.loads((run / "hf-parscale-p4" / "config.json").read_text())
    assert parscale["model_type"] == "qwen2_parscale" and parscale["parscale_n"] == STREAMS
    for export in ("hf-dense", "hf-parscale-p4"):
        folder = run / export
        assert (folder / "tokenizer.json").is_file() and (folder / "generation_config.json").is_file()
        config = json.loads((folder / "config.json").read_text())
        assert config["eos_token_id"] == imported["tokenizer"]["eos_id"] == config["pad_token_id"]
    assert "report:" in recipe["out"].replace("\n", "")


def _snippets(docs: list[str], n: int) -> list[str]:
    rnd = random.Random(2)
    text = "\n".join(docs)
    return [text[(at := rnd.randrange(len(text) - 200)) : at + rnd.randrange(20, 200)] for _ in range(n)]


@pytest.mark.multiprocess
def test_autotokenizer_on_the_dense_export_gives_our_ids(recipe):
    from transformers import AutoTokenizer

    from pipeline.checkpoint.portable import load_tokenizer

    ours = load_tokenizer(recipe["run"] / "stage2-dense" / "portable")
    theirs = AutoTokenizer.from_pretrained(str(recipe["run"] / "hf-dense"))
    snippets = _snippets(recipe["docs"], 100)
    assert [ours.encode(s) for s in snippets] == [theirs(s)["input_ids"] for s in snippets]


def _hf_loss(model, rows, spec) -> float:
    """transformers' mean token loss over the rows, each packed document on its own (the trained
    model attends within documents, positions restarting)."""
    from pipeline.data.loader import collate

    batch = collate(rows, spec.seq_len, spec.pad_id, documents=True)
    total, tokens = 0.0, 0.0
    for i in range(batch.input_ids.shape[0]):
        segments = batch.segment_ids[i]
        for s in segments.unique():
            at = segments == s
            logits = model(batch.input_ids[i][at][None]).logits[0].double()
            losses = torch.nn.functional.cross_entropy(logits, batch.labels[i][at], reduction="none")
            total += float((losses * batch.loss_mask[i][at]).sum())
            tokens += float(batch.loss_mask[i][at].sum())
    return total / tokens


@pytest.mark.multiprocess
def test_transformers_loss_on_the_dense_export_equals_parscale_eval(recipe):
    from transformers import AutoModelForCausalLM

    from pipeline.data.loader import DataSpec
    from pipeline.training.evaluation import validation_rows

    run = recipe["run"]
    cfg = load_config(run / "stage2-dense" / "job.yaml").config
    spec = DataSpec.of(cfg)
    rows = validation_rows(cfg, cfg.run.seed + 1).rows(0, cfg.eval.max_batches * cfg.parallel.micro_batch_size)
    model = AutoModelForCausalLM.from_pretrained(str(run / "hf-dense"), dtype=torch.float32).eval()
    with torch.no_grad():
        loss = _hf_loss(model, rows, spec)
    expected = json.loads((run / "eval.json").read_text())["dense"]["val_loss"]
    assert abs(loss - expected) < 1e-5, (loss, expected)


@pytest.mark.multiprocess
def test_transformers_greedy_generate_on_the_dense_export_equals_ours(recipe):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.checkpoint.portable import load_portable, load_tokenizer
    from pipeline.commands.generate_cmd import prompt_ids
    from pipeline.distributed import single_process
    from pipeline.model.generation import Sampling, generate

    run = recipe["run"]
    portable = run / "stage2-dense" / "portable"
    tok = load_tokenizer(portable)
    prompt = "doc 7: alpha"
    ids = prompt_ids(tok, prompt)
    with single_process():
        model, _ = load_portable(portable)
        ours = generate(model.eval(), [ids], Sampling(max_new_tokens=10, temperature=0.0, eos_id=tok.eos_id), 0)[0]
    hf_tok = AutoTokenizer.from_pretrained(str(run / "hf-dense"))
    hf_ids = [hf_tok.eos_token_id] + hf_tok(prompt)["input_ids"]
    assert hf_ids == ids
    hf = AutoModelForCausalLM.from_pretrained(str(run / "hf-dense"), dtype=torch.float32).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([hf_ids]), max_new_tokens=10, do_sample=False)[0, len(hf_ids) :].tolist()
    assert out[: len(ours)] == list(ours) and len(ours) > 0


@pytest.mark.multiprocess
def test_generate_and_eval_work_on_the_imported_model(recipe):
    run = recipe["run"]
    proc = cli("generate", str(run / "imported"), "--prompt", "doc 3:", "--max-new-tokens", "6")
    assert proc.returncode == 0 and proc.stdout.startswith("doc 3:"), proc.stderr[-2000:]
    evals = json.loads((run / "eval.json").read_text())
    assert evals["stage1"]["checkpoint"] == str(run / "imported") and evals["stage1"]["val_loss"] > 0


@pytest.mark.multiprocess
def test_a_rerun_skips_every_stage_and_there_is_no_stage_1(recipe):
    proc = cli("run", str(recipe["config"]), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage 1: dense" not in proc.stdout and "consolidate" not in proc.stdout
    for stage in ("data prep", f"dense -> ParScale P={STREAMS}", f"stage 2: ParScale P={STREAMS}", "evaluation"):
        assert f"skip {stage}: output already there" in proc.stdout, stage
