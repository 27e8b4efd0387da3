"""The sentencepiece tokenizer: train one on a sample of the corpus (BPE or unigram, byte
fallback, lossless on code), or take an existing .model; either way a copy lives beside the
shards and its SHA-256 goes into the manifest."""

from __future__ import annotations

import io
import random
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pipeline.config.data import TokenizerConfig
from pipeline.errors import JobError
from pipeline.utils.fs import file_sha256

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
ALWAYS_WHOLE = ["\n", "\t"]  # never split, never byte-fallback: code is full of them
TOKENIZER_NAME = "tokenizer.model"


@dataclass(frozen=True)
class TokenizerInfo:
    path: str
    sha256: str
    vocab_size: int
    type: str
    pad_id: int
    eos_id: int
    bos_id: int
    unk_id: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def token_dtype(vocab_size: int, requested: str) -> np.dtype:
    """uint16 when every id fits (and was not ruled out), else int32; refuses a dtype too small."""
    if requested == "auto":
        return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)
    dtype = np.dtype(requested)
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise ValueError(
            f"packing.token_dtype: {requested} holds ids up to {np.iinfo(dtype).max}, "
            f"but the vocabulary has {vocab_size} pieces"
        )
    return dtype


def _lines(docs: Iterable[str]) -> Iterator[str]:
    for doc in docs:
        for line in doc.split("\n"):
            if line.strip():
                yield line


def train(cfg: TokenizerConfig, sample: list[str], seed: int, out: Path) -> Path:
    """Train on ``sample`` (documents) and write the model to ``out``; deterministic for a seed."""
    random.Random(seed).shuffle(sample)
    model = io.BytesIO()
    symbols = ALWAYS_WHOLE + [s for s in cfg.user_defined_symbols if s not in ALWAYS_WHOLE]
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(sample),
        model_writer=model,
        model_type=cfg.type,
        vocab_size=cfg.vocab_size,
        byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=symbols,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_sentence_length=1 << 16,
        hard_vocab_limit=False,
        num_threads=1,
        seed_sentencepiece_size=100_000,
        minloglevel=2,
    )
    got = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if got < cfg.vocab_size:
        print(
            f"warning: tokenizer.vocab_size is {cfg.vocab_size}, but sentencepiece made {got} pieces from this "
            f"sample (too few distinct pieces in it); the data and the model use {got}. Lower "
            "tokenizer.vocab_size, or sample more documents (tokenizer.sample_docs).",
            file=sys.stderr,
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return out


def adopt(model_path: str, out: Path) -> Path:
    """Copy an existing model next to the shards (so the output is self-contained)."""
    src = Path(model_path)
    if not src.is_file():
        raise FileNotFoundError(f"tokenizer.model_path: no such file: {model_path}")
    if src.resolve() != out.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
    return out


class TokenizerError(JobError):
    pass


def load(path: str | Path) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{path}: not a sentencepiece model ({str(exc).splitlines()[0][:200]})") from None


def describe(path: Path, cfg_type: str) -> TokenizerInfo:
    sp = load(path)
    return TokenizerInfo(
        path=path.name,
        sha256=file_sha256(path),
        vocab_size=sp.get_piece_size(),
        type=cfg_type,
        pad_id=sp.pad_id(),
        eos_id=sp.eos_id(),
        bos_id=sp.bos_id(),
        unk_id=sp.unk_id(),
    )
