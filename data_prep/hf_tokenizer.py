"""A Hugging Face tokenizer (``tokenizer.json``, e.g. Qwen2's or Llama 3's byte-level BPE) through
the ``tokenizers`` library; its special tokens from ``tokenizer_config.json`` when the folder has one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer

from .text_tokenizer import TextTokenizer, TokenizerError

JSON_NAME, CONFIG_NAME = "tokenizer.json", "tokenizer_config.json"
#: the files of a Hugging Face tokenizer folder that travel with it (data, checkpoints, exports)
FILES = (
    JSON_NAME,
    CONFIG_NAME,
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
#: end-of-document tokens looked for when neither tokenizer.eod_token nor an eos_token names one
EOD_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(TextTokenizer):
    kind = "hf"

    def __init__(self, path: str | Path, eod_token: str | None = None, threads: int = 1):
        path = Path(path)
        self.path = path if path.is_file() else path / JSON_NAME
        try:
            self.tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise TokenizerError(f"{self.path}: not a Hugging Face tokenizer.json ({str(exc)[:200]})") from None
        self.tok.encode_special_tokens = True  # "<|endoftext|>" in a document's text is text, never a real EOD
        self.threads = threads
        self.model_type = type(self.tok.model).__name__.lower()
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        config = self._config()
        named = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}
        self.bos_id, self.pad_id = (self._id(named[k]) for k in ("bos_token", "pad_token"))
        unk = getattr(self.tok.model, "unk_token", None)
        self.unk_id = self._id(unk)
        self.eos_id = self._eod(eod_token, named["eos_token"])

    def _config(self) -> dict:
        path = self.path.parent / CONFIG_NAME
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"{path}: unreadable ({exc})") from None

    def _id(self, token: str | None) -> int:
        found = self.tok.token_to_id(token) if token else None
        return -1 if found is None else found

    def _eod(self, asked: str | None, eos: str | None) -> int:
        if asked is not None:
            if (found := self._id(asked)) < 0:
                raise TokenizerError(f"tokenizer.eod_token: {asked!r} is not a token of {self.path}")
            return found
        for token in (eos, *EOD_CANDIDATES):
            if token and (found := self._id(token)) >= 0:
                return found
        raise TokenizerError(
            f"{self.path}: no end-of-document token (no eos_token in {CONFIG_NAME}, none of "
            f"{', '.join(EOD_CANDIDATES)}); set tokenizer.eod_token"
        )

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # tokenizers splits a batch over its thread pool unless parallelism is off (one thread per actor)
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if self.threads > 1 else "false"
        return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def piece(self, token_id: int) -> str:
        return self.tok.id_to_token(token_id) or ""
