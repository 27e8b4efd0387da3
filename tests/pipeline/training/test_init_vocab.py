"""``train.init_from`` never changes the vocabulary silently: another tokenizer, or fewer or more
rows than the checkpoint's, is refused naming both sides; ``train.grow_vocab`` adds rows at the
mean embedding; the same tokenizer keeps the checkpoint's rows."""

from __future__ import annotations

import pytest
import torch
from helpers.checkpoints import tiny_tokenizer
from helpers.training import TINY_MODEL, job_config

from pipeline.checkpoint.portable import save_portable
from pipeline.config import ConfigError, load_config
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.distributed import single_process
from pipeline.model import ParScaleLM
from pipeline.training.trainer import Trainer

EMBED = "model.embed_tokens.weight"


def _portable(path, rows: int, tokenizer=None, seed: int = 0):
    with single_process():
        torch.manual_seed(seed)
        model = ParScaleLM(ModelConfig(**TINY_MODEL, vocab_size=rows), ParScaleConfig(), rows)
        save_portable(model, path, tokenizer=tokenizer)
        return {k: v.detach().clone() for k, v in model.named_parameters()}


def _from_loaded(loaded, world) -> Trainer:
    return Trainer.from_loaded(loaded, world(loaded.config))


def _trainer(tmp_path, data, world, init, **sections):
    path = job_config(tmp_path, data, "init", train={"tokens": 256, "init_from": str(init), **sections})
    return _from_loaded(load_config(path), world)


def test_another_tokenizer_is_refused_naming_both(tmp_path, prepared_data, single_rank):
    model_file, vocab = tiny_tokenizer(tmp_path)
    _portable(tmp_path / "other", vocab, tokenizer=model_file)
    with pytest.raises(ConfigError, match="train.init_from: .* was trained with another tokenizer") as caught:
        _trainer(tmp_path, prepared_data, single_rank, tmp_path / "other")
    message = str(caught.value)
    assert f"{vocab} ids" in message and "400 ids" in message and "tokenizer.model_path" in message


def test_fewer_rows_than_the_data_needs_are_refused_then_grown_with_the_opt_in(tmp_path, prepared_data, single_rank):
    before = _portable(tmp_path / "small", 256)  # no tokenizer carried: the rows are what can be checked
    with pytest.raises(ConfigError, match="has 256 vocabulary rows, but the model needs 400") as caught:
        _trainer(tmp_path, prepared_data, single_rank, tmp_path / "small")
    assert "train.grow_vocab: true to add 144 rows" in str(caught.value)
    trainer = _trainer(tmp_path, prepared_data, single_rank, tmp_path / "small", grow_vocab=True)
    embed = dict(trainer.engine.module.named_parameters())[EMBED].detach()
    assert torch.equal(embed[:256], before[EMBED])
    mean = before[EMBED].mean(dim=0)
    assert torch.allclose(embed[256:400], mean.expand(144, -1))


def test_shrinking_is_refused_and_the_same_tokenizer_keeps_the_checkpoint_rows(tmp_path, prepared_data, single_rank):
    _portable(tmp_path / "wide", 448, tokenizer=prepared_data)
    with pytest.raises(ConfigError, match="model.vocab_size: 416 rows, below the 448 vocabulary rows"):
        path = job_config(tmp_path, prepared_data, "shrink", train={"tokens": 256, "init_from": str(tmp_path / "wide")})
        _from_loaded(load_config(path, ["model.vocab_size=416"]), single_rank)
    trainer = _trainer(tmp_path, prepared_data, single_rank, tmp_path / "wide")
    assert trainer.vocab == 448
