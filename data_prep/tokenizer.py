"""Which tokenizer a file or folder holds, and the record that travels with it.

A tokenizer is a sentencepiece ``tokenizer.model`` (trained here, or given) or a Hugging Face
``tokenizer.json`` (given as the file or as a model folder, with its ``tokenizer_config.json``).
Prepared data and portable checkpoints carry its files in their own folder, and their JSON records
its ``TokenizerInfo``: kind, main file and sha256 (the tokenizer's identity), every file's sha256,
vocabulary size and special ids (``eos_id`` is the end-of-document token)."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.utils.fs import file_sha256

from . import hf_tokenizer, sentencepiece_tokenizer
from .text_tokenizer import TextTokenizer, TokenizerError

KINDS = ("sentencepiece", "hf")


@dataclass(frozen=True)
class TokenizerInfo:
    path: str  # the main file's name: tokenizer.model or tokenizer.json
    sha256: str  # the main file's: what identifies the tokenizer
    vocab_size: int
    type: str
    pad_id: int
    eos_id: int  # the end-of-document token
    bos_id: int
    unk_id: int
    kind: str = "sentencepiece"
    files: dict[str, str] = field(default_factory=dict)  # every file that travels with it -> sha256

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerInfo:
        """A record as written; one from before HF tokenizers (no kind, no files) is sentencepiece's."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known.setdefault("files", {data["path"]: data["sha256"]})
        return cls(**known)

    def describe(self) -> str:
        return f"{self.kind} {self.path} (sha256 {self.sha256[:12]}..., {self.vocab_size} ids, end of document {self.eos_id})"


def locate(source: str | Path) -> tuple[str, Path, list[Path]]:
    """(kind, main file, every file to carry) of the tokenizer at ``source``: a ``.model`` file, a
    ``tokenizer.json`` file, or a folder holding either (``tokenizer.json`` first)."""
    source = Path(source)
    if source.is_dir():
        if (source / hf_tokenizer.JSON_NAME).is_file():
            main = source / hf_tokenizer.JSON_NAME
        elif (source / sentencepiece_tokenizer.MODEL_NAME).is_file():
            main = source / sentencepiece_tokenizer.MODEL_NAME
        else:
            raise TokenizerError(
                f"{source}: holds no tokenizer ({hf_tokenizer.JSON_NAME} or {sentencepiece_tokenizer.MODEL_NAME})"
            )
    elif source.is_file():
        main = source
    else:
        raise TokenizerError(f"{source}: no such file or folder")
    if main.suffix == ".json":
        extra = [main.parent / n for n in hf_tokenizer.FILES if n != main.name and (main.parent / n).is_file()]
        return "hf", main, [main, *extra]
    return "sentencepiece", main, [main]


def open_tokenizer(source: str | Path, eod_token: str | None = None, threads: int = 1) -> TextTokenizer:
    kind, main, _ = locate(source)
    cls = hf_tokenizer.HFTokenizer if kind == "hf" else sentencepiece_tokenizer.SentencePieceTokenizer
    return cls(main, eod_token=eod_token, threads=threads)


def open_recorded(folder: str | Path, info: TokenizerInfo, threads: int = 1) -> TextTokenizer:
    """The tokenizer whose files and record ``info`` a folder (prepared data, a checkpoint) holds,
    with the end-of-document id it was recorded with."""
    t = open_tokenizer(Path(folder) / info.path, threads=threads)
    if t.vocab_size != info.vocab_size:
        raise TokenizerError(
            f"{Path(folder) / info.path}: {t.vocab_size} ids, but its record says {info.vocab_size} (changed since?)"
        )
    t.eos_id = info.eos_id
    return t


def describe(source: str | Path, eod_token: str | None = None) -> TokenizerInfo:
    kind, main, files = locate(source)
    t = open_tokenizer(source, eod_token)
    return TokenizerInfo(
        path=main.name,
        sha256=file_sha256(main),
        vocab_size=t.vocab_size,
        type=t.model_type,
        pad_id=t.pad_id,
        eos_id=t.eos_id,
        bos_id=t.bos_id,
        unk_id=t.unk_id,
        kind=kind,
        files={f.name: file_sha256(f) for f in files},
    )


def copy_files(source: str | Path, folder: str | Path) -> list[Path]:
    """Copy the tokenizer at ``source`` into ``folder`` under the standard names; the copies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind, main, files = locate(source)
    names = {main: hf_tokenizer.JSON_NAME if kind == "hf" else sentencepiece_tokenizer.MODEL_NAME}
    copies = []
    for f in files:
        target = folder / names.get(f, f.name)
        if f.resolve() != target.resolve():
            shutil.copyfile(f, target)
        copies.append(target)
    return copies


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
