"""The Trainer built from a typed JobConfig in this process (world size 1): config errors found
while building name the key (and, from YAML, the file and line), ``train_step`` keeps its loss on
the device until resolved, and the trainer's evaluation, a plain loop over the same rows and
``parscale eval`` of the export give the same validation loss (one shared loss loop)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from helpers.training import job_config

from pipeline.config import ConfigError, load_config
from pipeline.config.job import JobConfig
from pipeline.distributed import destroy_distributed
from pipeline.training.evaluation import evaluate_portable
from pipeline.training.trainer import Trainer


def _typed(tmp_path, data, **sections) -> JobConfig:
    return JobConfig.model_validate(yaml.safe_load(job_config(tmp_path, data, "typed", **sections).read_text()))


def _trainer(path, world) -> Trainer:
    loaded = load_config(path)
    return Trainer.from_loaded(loaded, world(loaded.config))


def test_config_errors_name_the_key_and_from_yaml_the_line(tmp_path, prepared_data, single_rank):
    cfg = _typed(tmp_path, prepared_data, model={"vocab_size": 300})
    with pytest.raises(ConfigError, match=r"config: model.vocab_size: 300 is below the tokenizer's 400"):
        Trainer(cfg, single_rank(cfg))
    path = job_config(tmp_path, prepared_data, "yaml", model={"vocab_size": 300})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "vocab_size" in text)
    with pytest.raises(ConfigError, match=rf"{path}:{line}: model.vocab_size: 300 is below the tokenizer's 400"):
        _trainer(path, single_rank)


def test_an_init_from_that_is_not_portable_is_refused_naming_the_key_and_the_command(
    tmp_path, prepared_data, single_rank
):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "qwen2"}')
    path = job_config(tmp_path, prepared_data, "init", train={"tokens": 256, "init_from": str(hf)})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("init_from:"))
    with pytest.raises(ConfigError, match=rf"{path}:{line}: train.init_from: {hf}: a Hugging Face folder") as caught:
        _trainer(path, single_rank)
    assert f"run `parscale convert import-hf {hf} DST`" in str(caught.value)


def test_steps_resolve_and_one_loss_loop_for_training_and_parscale_eval(tmp_path, prepared_data, single_rank):
    cfg = _typed(
        tmp_path,
        prepared_data,
        parscale={"streams": 2, "prefix_len": 4},
        eval={"max_batches": 3, "stream_diagnostics": True},
        train={"tokens": 2 * 8 * 32},
    )
    trainer = Trainer(cfg, single_rank(cfg))
    assert trainer.total_steps == 2 and trainer.vocab >= 400 and trainer.gas == 4
    outcomes = [trainer.train_step() for _ in range(2)]
    assert all(o.loss.device == torch.device(trainer.ctx.device) and o.loss_value is None for o in outcomes)
    trainer.resolve()
    assert [o.loss_value for o in outcomes] == pytest.approx([o.loss.item() for o in outcomes])
    assert all(math.isfinite(o.loss_value) and o.applied for o in outcomes) and trainer.skipped == 0
    assert outcomes[0].stream_weights.shape == (2,)

    result = trainer.evaluate()
    module = trainer.engine.module
    module.eval()
    total = tokens = 0.0
    with torch.no_grad():  # the same rows, summed by hand
        for b in range(3):
            batch = trainer.data.batch(cfg, trainer.data.val, b * 2, 2, trainer.ctx.device)
            out = module(batch.input_ids, labels=batch.labels, loss_mask=batch.loss_mask, segment_ids=batch.segment_ids)
            total += out.loss.item() * batch.tokens
            tokens += batch.tokens
    assert result["tokens"] == tokens and result["val_loss"] == pytest.approx(total / tokens, rel=1e-6)
    assert {"stream_spread", "weight_entropy", "prefix_cosine", "update_cosine", "diversity_gain"} <= result.keys()

    portable = trainer.export_portable()
    destroy_distributed()
    loaded = load_config(
        job_config(
            tmp_path,
            prepared_data,
            "typed",
            eval={"max_batches": 3, "stream_diagnostics": True},
            parscale={"streams": 2, "prefix_len": 4},
        )
    )
    again = evaluate_portable(loaded, str(portable))
    assert again["tokens"] == result["tokens"] and again["val_loss"] == pytest.approx(result["val_loss"], rel=1e-6)
    assert again["diversity_gain"] == pytest.approx(result["diversity_gain"], abs=1e-6)


def test_a_stop_file_that_exists_before_the_run_is_refused_and_kept(tmp_path, prepared_data, single_rank):
    stop = tmp_path / "STOP"
    stop.write_text("left from last week")
    path = job_config(tmp_path, prepared_data, "stop", checkpoint={"stop_file": str(stop)})
    with pytest.raises(ConfigError, match=rf"checkpoint.stop_file: {stop} exists before the run started"):
        _trainer(path, single_rank)
    assert stop.read_text() == "left from last week"


def test_a_packing_seq_len_other_than_the_datas_is_refused(tmp_path, prepared_data, single_rank):
    path = job_config(tmp_path, prepared_data, "seq", packing={"seq_len": 48})
    with pytest.raises(ConfigError, match=r"packing.seq_len: 48, but .* was packed to 32"):
        _trainer(path, single_rank)


def test_a_seq_len_whose_micro_batch_cannot_fit_is_refused_before_anything_is_built(
    tmp_path, prepared_data, single_rank, monkeypatch
):
    from pipeline.training import memory_check

    typed = _typed(tmp_path, prepared_data, model={"max_seq_len": 500_000}, parallel={"micro_batch_size": 2})
    need = memory_check.MicroBatchMemory.of(typed, 400_000, 400, "sdpa")
    assert need.mask_bytes == 2 * 400_000**2  # the 320 GB allocation that used to end in a traceback
    assert need.logits_bytes == 2 * 400_000 * 400 * 4  # the test model pads its 400 ids to a multiple of 8
    assert memory_check.MicroBatchMemory.of(typed, 400_000, 400, "flex").mask_bytes == 0
    monkeypatch.setattr(memory_check, "free_memory", lambda device: 64 * memory_check.GB)
    problem = memory_check.micro_batch_problem(typed, 400_000, 400, "sdpa", torch.device("cpu"))
    assert problem.startswith("400000 tokens per row need at least 298.0 GB of dense attention mask (sdpa)")
    assert "more than the 64.0 GB free on cpu" in problem
    assert memory_check.micro_batch_problem(typed, 2048, 400, "sdpa", torch.device("cpu")) is None

    monkeypatch.setattr(memory_check, "free_memory", lambda device: 1000)  # the prepared rows do not fit
    built = []
    monkeypatch.setattr("pipeline.training.trainer.ParScaleLM", lambda *a, **k: built.append(1))
    path = job_config(tmp_path, prepared_data, "huge")
    with pytest.raises(ConfigError, match=r"packing.seq_len: 32 tokens per row need at least .* free on cpu: lower"):
        _trainer(path, single_rank)
    assert built == []
