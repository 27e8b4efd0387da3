"""The tokenizer of a Hugging Face export: files that ``AutoTokenizer.from_pretrained(export)`` loads
and that give the ids the model was trained on.

- A Hugging Face tokenizer (prepared with ``tokenizer.model_path`` a ``tokenizer.json``) goes back as
  it came, with a ``tokenizer_config.json`` naming the end-of-document token if it had none.
- A sentencepiece model trained here becomes a ``tokenizer.json`` for the ``tokenizers`` library:
  the same pieces and ids (BPE merges from the pieces' scores, or the unigram scores), spaces as
  ``▁`` with no dummy prefix, runs of whitespace kept together as sentencepiece splits them, byte
  fallback, newline and tab as whole pieces; special tokens in text are encoded as text
  (``split_special_tokens``; a unigram model's lattice still matches the literal text of a control
  piece such as ``</s>``, which sentencepiece never produces), no BOS is added. The result is checked against sentencepiece on a
  fixed sample before the export is written (``VerifyError`` names the first difference). The
  ``tokenizer.model`` goes along for sentencepiece users."""

from __future__ import annotations

import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from data_prep.sentencepiece_tokenizer import SentencePieceTokenizer
from data_prep.text_tokenizer import TextTokenizer
from data_prep.tokenizer import TokenizerInfo, copy_files
from pipeline.checkpoint.portable import CheckpointError, load_tokenizer

#: text the converted tokenizer must encode exactly as sentencepiece does (code, prose, whitespace
#: runs, digits, unicode, bytes outside the vocabulary)
SAMPLE = [
    'def f(x):\n\tif x:\n        return "café ☃ {}"\n    return None  # done\r\n',
    "The quick brown fox jumps over the lazy dog 1234567890 times.  Twice   spaced\n\n\n",
    "   leading spaces, trailing spaces   ",
    "class A(B):\n    '''Doc.'''\n\n    def __init__(self, *args, **kwargs) -> None:\n        super().__init__()\n",
    "emoji \U0001f600 and CJK 漢字 and combining é and zero-width \u200b",
    "x=1;y=2\tz=3\n\t\tw = [i ** 2 for i in range(10) if i % 2 == 0]",
]


def _token_text(tok: TextTokenizer, token_id: int) -> str | None:
    return tok.piece(token_id) if token_id >= 0 else None


def _sentencepiece_json(sp: SentencePieceTokenizer):
    """The ``tokenizers`` equivalent of a sentencepiece model trained by ``data_prep``."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    proto = pb.ModelProto.FromString(sp.sp.serialized_model_proto())
    if proto.normalizer_spec.add_dummy_prefix or proto.normalizer_spec.name not in ("identity", ""):
        raise CheckpointError(
            f"{sp.path}: a sentencepiece model with a dummy prefix or normalization rule "
            f"{proto.normalizer_spec.name!r}: only models trained by parscale prep are converted"
        )
    control = [p.piece for p in proto.pieces if p.type in (pb.ModelProto.SentencePiece.CONTROL,)]
    user = [p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]
    unk = sp.piece(sp.unk_id) if sp.unk_id >= 0 else None
    if sp.model_type == "unigram":
        vocab = [(p.piece, p.score) for p in proto.pieces]
        model = models.Unigram(vocab, unk_id=sp.unk_id if sp.unk_id >= 0 else None, byte_fallback=True)
    else:
        vocab, _, merges = SentencePieceExtractor(str(sp.path)).extract()
        skip = set(control)
        merges = [(a, b) for a, b in merges if not {a, b, a + b} & skip]
        model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    # sentencepiece with whitespace-only pieces: a word is a run of spaces and what follows it
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁+[^▁]*|[^▁]+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in control + ([unk] if unk else [])])
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p in user])
    return tok


def _check_same_ids(ours: TextTokenizer, folder: Path, texts: list[str]) -> None:
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(folder))
    for text in texts:
        a, b = ours.encode(text), theirs(text)["input_ids"]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            raise CheckpointError(
                f"the exported tokenizer differs from the checkpoint's on {text[:60]!r} at token {at} "
                f"({a[at : at + 3]} vs {b[at : at + 3]})"
            )


def special_ids(source: Path) -> dict:
    """bos/eos/pad ids for ``config.json`` and ``generation_config.json``: documents follow an
    end-of-document token in training, so it is what a sequence starts after (as Qwen2.5's
    ``bos_token_id``; the tokenizer adds no BOS), what ends generation, and the padding when the
    tokenizer has none."""
    ours = load_tokenizer(source)
    pad = ours.pad_id if ours.pad_id >= 0 else ours.eos_id
    return {"bos_token_id": ours.eos_id, "eos_token_id": ours.eos_id, "pad_token_id": pad}


def export(source: Path, info: TokenizerInfo, out: Path, sample: list[str] | None, model_type: str) -> None:
    """Write the tokenizer of the portable checkpoint ``source`` into the export folder ``out``
    (its config.json already written), checked with ``AutoTokenizer`` on ``SAMPLE`` and ``sample``."""
    from transformers import PreTrainedTokenizerFast

    ours = load_tokenizer(source)
    eod = _token_text(ours, ours.eos_id)
    if info.kind == "hf":
        copy_files(source, out)
        config = out / "tokenizer_config.json"
        if not config.is_file() or not json.loads(config.read_text(encoding="utf-8")).get("eos_token"):
            extra = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
            config.write_text(json.dumps(extra | {"eos_token": eod}, indent=2) + "\n")
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=_sentencepiece_json(ours),
            eos_token=eod,
            pad_token=_token_text(ours, ours.pad_id),
            unk_token=_token_text(ours, ours.unk_id),
            split_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )
        fast.save_pretrained(str(out))
        copy_files(source / info.path, out)
    try:
        _check_same_ids(ours, out, SAMPLE + (sample or []))
    except CheckpointError as exc:
        hint = (
            "; transformers loads the tokenizer of a qwen2 folder as Qwen2's byte-level BPE whatever its "
            "tokenizer_config.json says, and this one is not Qwen2's: export with --model-type llama"
            if model_type == "qwen2"
            else ""
        )
        raise CheckpointError(f"{exc}{hint}") from None
