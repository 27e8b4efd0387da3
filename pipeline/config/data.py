"""Config sections for data preparation: the sources, the tokenizer and sequence packing."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import Count, StrictModel


class _Source(StrictModel):
    name: str | None = Field(None, description="Label in the manifest; defaults to the type and path.")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight of this source.")


class JsonlSource(_Source):
    type: Literal["jsonl"]
    path: str = Field(description="A .jsonl file, a directory, or a glob.")
    text_field: str = "text"


class ParquetSource(_Source):
    type: Literal["parquet"]
    path: str
    text_field: str = "text"


class TextSource(_Source):
    """Plain text files, one document per file."""

    type: Literal["text"]
    path: str
    glob: str = "**/*.txt"
    exclude: list[str] = Field(default_factory=list, description="Globs (relative to path) to skip.")


class CodeSource(_Source):
    """A source tree: every file matching ``glob`` under ``path`` is one document."""

    type: Literal["code"]
    path: str
    glob: str = "**/*.py"
    exclude: list[str] = Field(default_factory=list, description="Globs (relative to path) to skip.")


class HFDiskSource(_Source):
    """A Hugging Face dataset written with ``save_to_disk``."""

    type: Literal["hf_disk"]
    path: str
    split: str = "train"
    text_field: str = "text"


class HFFilesSource(_Source):
    """Local files read through ``datasets.load_dataset(builder, data_files=path)``."""

    type: Literal["hf_files"]
    builder: Literal["json", "parquet", "csv", "text"]
    path: str
    split: str = "train"
    text_field: str = "text"


class StdlibSource(_Source):
    """The embedded default corpus: the running interpreter's standard-library sources."""

    type: Literal["stdlib"]
    glob: str = "**/*.py"
    exclude: list[str] = Field(
        default_factory=lambda: ["site-packages/*", "dist-packages/*"],
        description="Third-party packages installed beside the standard library are not part of it.",
    )


DataSource = Annotated[
    JsonlSource | ParquetSource | TextSource | CodeSource | HFDiskSource | HFFilesSource | StdlibSource,
    Field(discriminator="type"),
]


class DataConfig(StrictModel):
    sources: list[DataSource] = Field(default_factory=lambda: [StdlibSource(type="stdlib")], min_length=1)
    output_dir: str = Field("data/prepared", description="Where shards and the manifest are written.")
    val_fraction: float = Field(0.01, ge=0, lt=0.5, description="Share of documents held out, by hash.")
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, gt=0)
    dedup: bool = Field(False, description="Drop exact duplicate documents (content hash).")
    control_chars: Literal["strip", "reject", "keep"] = Field(
        "strip",
        description="Control characters other than tab, newline and form feed (NUL, ESC, DEL, C1...): strip them "
        "from the document (counted), reject the document, or keep them.",
    )
    ray_address: str | None = Field(None, description="Existing Ray cluster; None starts a local one.")
    num_workers: int | None = Field(None, ge=1, description="Tokenizer actors; None = CPUs available.")
    unit_mb: float = Field(4.0, gt=0, description="Work unit size: input bytes read and tokenized as one task.")

    @model_validator(mode="after")
    def _chars(self) -> DataConfig:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


class TokenizerConfig(StrictModel):
    model_path: str | None = Field(
        None,
        description="An existing tokenizer: a sentencepiece .model, a Hugging Face tokenizer.json, or a model folder "
        "holding either (e.g. a Qwen2.5 checkpoint: its tokenizer.json and tokenizer_config.json); None trains a "
        "sentencepiece model on the corpus.",
    )
    eod_token: str | None = Field(
        None,
        description="The end-of-document token appended to every document (a token of the given tokenizer). None: "
        "sentencepiece's EOS piece; for a Hugging Face tokenizer its eos_token (tokenizer_config.json), else the "
        "first of <|endoftext|>, </s>, <|end_of_text|>, <eos> it has.",
    )
    type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(8192, ge=64)
    byte_fallback: bool = True
    character_coverage: float = Field(0.995, gt=0, le=1, description="Rarer characters go to byte fallback.")
    sample_docs: Count = Field(20000, ge=1, description="Documents sampled from the corpus for training.")
    user_defined_symbols: list[str] = Field(
        default_factory=list, description="Extra pieces kept whole (newline and tab always are)."
    )


class PackingConfig(StrictModel):
    seq_len: int = Field(2048, ge=8, description="Training sequence length; stored rows hold seq_len+1.")
    strategy: Literal["concat", "best_fit"] = "best_fit"
    token_dtype: Literal["auto", "uint16", "int32"] = "auto"
    sequences_per_shard: int = Field(8192, ge=1)
    best_fit_window: int = Field(
        4096, ge=1, description="Documents buffered and packed together by best_fit (bounds memory)."
    )
