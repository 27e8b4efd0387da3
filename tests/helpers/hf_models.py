"""A stand-in for a pretrained Hugging Face checkpoint, built here with nothing from a hub: a
byte-level BPE tokenizer (Qwen2 / Llama 3 style) trained with ``tokenizers`` on a given corpus, and
a tiny ``Qwen2ForCausalLM`` with random weights, saved together as a model folder."""

from __future__ import annotations

from pathlib import Path

import torch

EOD = "<|endoftext|>"
#: Qwen2's pre-tokenization (its tokenizer.json): what transformers' Qwen2Tokenizer applies
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def byte_level_bpe(texts: list[str], folder: Path, vocab_size: int = 600) -> Path:
    """Train a byte-level BPE on ``texts`` with Qwen2's pre-tokenization; save it as a Hugging Face
    tokenizer folder (``tokenizer.json``, ``tokenizer_config.json`` with ``<|endoftext|>`` as eos and
    pad, no BOS), as a Qwen2.5 folder has."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD, pad_token=EOD)
    fast.save_pretrained(folder)
    return folder


def tiny_qwen2(folder: Path, vocab_size: int, seed: int = 0, **shape) -> Path:
    """A random tiny Qwen2 saved (safetensors) into ``folder``, its vocabulary ``vocab_size`` rows."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, **(QWEN_SHAPE | shape))
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def pretrained_folder(folder: Path, texts: list[str], vocab_size: int = 600, rows: int | None = None) -> Path:
    """A model folder as a user downloads one: a byte-level BPE tokenizer and a tiny Qwen2 whose
    embedding has ``rows`` rows (default: the tokenizer's size rounded up to 64, as Qwen pads)."""
    byte_level_bpe(texts, folder, vocab_size)
    from tokenizers import Tokenizer

    n = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    return tiny_qwen2(folder, rows or -(-n // 64) * 64)
