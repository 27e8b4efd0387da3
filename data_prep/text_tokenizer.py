"""What every tokenizer of the pipeline offers (sentencepiece, Hugging Face ``tokenizers``): ids of
text and text of ids, the vocabulary size and the special ids, with ``eos_id`` the end-of-document
token appended to every document."""

from __future__ import annotations

from pipeline.errors import UserError


class TokenizerError(UserError):
    pass


def padding_id(pad_id: int) -> int:
    """What pads batches and generation: the tokenizer's pad id, or 0 when it has none (-1)."""
    return max(pad_id, 0)


class TextTokenizer:
    kind: str  # "sentencepiece" | "hf"
    model_type: str  # bpe, unigram, ... (as the tokenizer's own file says)
    vocab_size: int  # one past the largest id
    eos_id: int  # end of document: appended to every document, ends generation
    bos_id: int  # -1: none
    pad_id: int  # -1: none
    unk_id: int  # -1: none

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        raise NotImplementedError
