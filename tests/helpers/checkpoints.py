"""A tiny model with a real sentencepiece tokenizer, for tests of checkpoint files and tools."""

from __future__ import annotations

from pathlib import Path

import torch

from data_prep import sentencepiece_tokenizer as sp_tok
from data_prep.tokenizer import open_tokenizer
from pipeline.config.data import TokenizerConfig
from pipeline.config.model import ModelConfig, ParScaleConfig
from pipeline.model import ParScaleLM

from .corpus import text_doc


def tiny_tokenizer(root: Path) -> tuple[Path, int]:
    model_file = sp_tok.train(TokenizerConfig(vocab_size=300), [text_doc(i) for i in range(100)], 0, root / "t.model")
    return model_file, open_tokenizer(model_file).vocab_size


def tiny_model(vocab: int, parscale: ParScaleConfig, tie: bool = True) -> ParScaleLM:
    """Needs megatron-core's groups up (``single_process``)."""
    cfg = ModelConfig(
        num_layers=2,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_kv_heads=2,
        vocab_size=vocab,
        pad_vocab_to_multiple_of=8,
        tie_embeddings=tie,
    )
    torch.manual_seed(0)
    return ParScaleLM(cfg, parscale, vocab)
