"""The vocabulary of a run that starts from ``train.init_from``: never changed silently.

- The checkpoint's tokenizer and the data's must be the same (sha256 of the tokenizer file), or,
  with ``train.grow_vocab``, the data's must extend the checkpoint's (every old id the same token).
- The model's rows are ``model.vocab_size``, or the checkpoint's (a Qwen2.5 import keeps its 151,936
  rows for a 151,665-id tokenizer). Fewer rows than the checkpoint's is refused; more only with
  ``train.grow_vocab``, the new rows starting at the mean of the trained ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from data_prep.text_tokenizer import TextTokenizer
from data_prep.tokenizer import TokenizerInfo, open_recorded

from ..checkpoint.portable import CheckpointError, load_tokenizer, read_config, tokenizer_info
from ..config.errors import ErrorAt
from ..config.job import JobConfig
from ..data.loader import DataSpec
from ..model.param_groups import VOCAB_ROWS


@dataclass(frozen=True)
class InitVocab:
    rows: int  # the model's vocabulary
    checkpoint_rows: int  # train.init_from's

    @property
    def added(self) -> int:
        return self.rows - self.checkpoint_rows


def extends(old: TextTokenizer, new: TextTokenizer) -> bool:
    """Whether ``new`` gives every id of ``old`` to the same token (new tokens only appended)."""
    return (
        old.kind == new.kind
        and new.vocab_size >= old.vocab_size
        and all(old.piece(i) == new.piece(i) for i in range(old.vocab_size))
    )


def _what(info: TokenizerInfo | None) -> str:
    return info.describe() if info is not None else "no tokenizer"


def tokenizer_problem(source: str, theirs: TokenizerInfo | None, spec: DataSpec, grow: bool = False) -> str | None:
    """Why the checkpoint ``source`` (its tokenizer ``theirs``) cannot read the data of ``spec``, or
    None: the same tokenizer file and end-of-document id (no tokenizer carried: nothing to compare),
    or with ``grow`` a data tokenizer that extends the checkpoint's."""
    ours = spec.tokenizer
    if theirs is None or (theirs.sha256, theirs.eos_id) == (ours.sha256, ours.eos_id):
        return None
    if grow and extends(load_tokenizer(source), open_recorded(spec.path, ours)):
        return None
    return (
        f"{source} was trained with another tokenizer than the data {spec.path}: checkpoint "
        f"{_what(theirs)}; data {_what(ours)}. Prepare the data with the checkpoint's tokenizer "
        f"(tokenizer.model_path: {source})"
        + (
            "; the data's tokenizer does not extend the checkpoint's (its ids differ), so train.grow_vocab cannot apply"
            if grow
            else ", or, if the data's tokenizer only appends tokens to the checkpoint's, set train.grow_vocab: true"
        )
    )


def plan(cfg: JobConfig, spec: DataSpec, error_at: ErrorAt) -> InitVocab | None:
    """The vocabulary rule for ``train.init_from`` (None without it); refusals name both sides."""
    source = cfg.train.init_from
    if not source:
        return None
    try:
        rows = int(read_config(source)["vocab_size"])
        theirs = tokenizer_info(source)
    except CheckpointError as exc:
        raise error_at("train.init_from", str(exc)) from None
    ours = spec.tokenizer
    grow = cfg.train.grow_vocab
    if problem := tokenizer_problem(source, theirs, spec, grow):
        raise error_at("train.init_from", problem)
    want = cfg.model.vocab_size or max(rows, ours.vocab_size)
    if want < rows:
        raise error_at(
            "model.vocab_size",
            f"{want} rows, below the {rows} vocabulary rows of train.init_from {source}; shrinking a trained "
            "vocabulary is refused (unset model.vocab_size to keep the checkpoint's)",
        )
    if want > rows and not grow:
        raise error_at(
            "train.init_from",
            f"{source} has {rows} vocabulary rows, but the model needs {want} (the data's tokenizer {_what(ours)}"
            f"{', model.vocab_size' if cfg.model.vocab_size else ''}); set train.grow_vocab: true to add "
            f"{want - rows} rows initialised at the mean embedding, or prepare the data with the checkpoint's tokenizer",
        )
    return InitVocab(want, rows)


def grow_rows(state: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """``state`` with each vocabulary tensor grown to ``rows`` rows, the new ones at the mean of
    the existing rows."""
    out = dict(state)
    for name in VOCAB_ROWS:
        if name in out and out[name].shape[0] < rows:
            t = out[name]
            mean = t.float().mean(dim=0, keepdim=True).to(t.dtype)
            out[name] = torch.cat([t, mean.expand(rows - t.shape[0], *t.shape[1:])])
    return out
