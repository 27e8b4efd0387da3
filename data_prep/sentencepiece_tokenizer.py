"""The sentencepiece tokenizer: train one on a sample of the corpus (BPE or unigram, byte fallback,
lossless on code), and encode/decode with a ``.model`` file."""

from __future__ import annotations

import io
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from pipeline.config.data import TokenizerConfig

from .text_tokenizer import TextTokenizer, TokenizerError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
ALWAYS_WHOLE = ["\n", "\t"]  # never split, never byte-fallback: code is full of them
MODEL_NAME = "tokenizer.model"


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


class SentencePieceTokenizer(TextTokenizer):
    kind = "sentencepiece"

    def __init__(self, path: str | Path, eod_token: str | None = None, threads: int = 1):
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path}: not a sentencepiece model ({str(exc).splitlines()[0][:200]})") from None
        self.path, self.threads = Path(path), threads
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.bos_id, self.unk_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.unk_id()
        self.eos_id = self.sp.eos_id() if eod_token is None else self._piece_id(eod_token)
        self.model_type = {1: "unigram", 2: "bpe"}.get(self._proto_type(), "sentencepiece")

    def _piece_id(self, piece: str) -> int:
        pid = self.sp.piece_to_id(piece)
        if pid == self.sp.unk_id() and piece != self.sp.id_to_piece(pid):
            raise TokenizerError(f"tokenizer.eod_token: {piece!r} is not a piece of {self.path}")
        return pid

    def _proto_type(self) -> int:
        return pb.ModelProto.FromString(self.sp.serialized_model_proto()).trainer_spec.model_type

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=self.threads)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)
