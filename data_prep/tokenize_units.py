"""Tokenize one work unit: read -> clean and filter -> hash -> batched encoding -> EOD.
The result (tokens, per-document lengths and hashes, rejections) is written atomically to one
.npz file per unit, so a killed job resumes from the units already done. Units are tokenized by
Ray actors (``UnitTokenizer``) and, while Ray starts, by a thread of the driver (``LocalTokenizer``)."""

from __future__ import annotations

import json
import queue
import threading
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config.data import DataConfig
from pipeline.errors import UserError
from pipeline.utils.fs import staged_file

from .filters import CONTROL_CHARS, clean, content_hash
from .readers import read_unit
from .rejects import RejectLog
from .text_tokenizer import TextTokenizer
from .tokenizer import open_tokenizer
from .units import WorkUnit

ENCODE_BATCH = 256


class DamagedUnit(UserError):
    """A finished unit's file in ``work/units`` cannot be read back (the message names it)."""


@dataclass
class UnitResult:
    tokens: np.ndarray  # all kept documents, each followed by EOD
    lengths: np.ndarray  # int64 tokens per document (EOD included)
    hashes: np.ndarray  # uint64 content hash per document
    wheres: list[str] = field(default_factory=list)  # where each kept document came from
    read: int = 0  # records read (kept + rejected)
    rejected: RejectLog = field(default_factory=RejectLog)
    stripped: RejectLog = field(default_factory=RejectLog)  # kept documents changed by a filter, by filter

    def save(self, path: Path) -> None:
        meta = json.dumps({"read": self.read, "rejected": self.rejected.to_dict(), "stripped": self.stripped.to_dict()})
        wheres = np.frombuffer("\n".join(self.wheres).encode("utf-8"), np.uint8)
        with staged_file(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle, tokens=self.tokens, lengths=self.lengths, hashes=self.hashes, wheres=wheres, meta=np.array(meta)
            )

    @classmethod
    def load(cls, path: Path) -> UnitResult:
        """The unit saved at ``path``; a file that is not one this job wrote (damaged, truncated,
        or holding pickled objects, which are never unpickled) is a ``DamagedUnit``."""
        try:
            return cls._load(path)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise DamagedUnit(
                f"{path}: not a readable tokenized unit ({type(exc).__name__}: {str(exc)[:120]}); delete it and "
                "rerun 'parscale prep': only that unit is tokenized again"
            ) from None

    @classmethod
    def _load(cls, path: Path) -> UnitResult:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            wheres = data["wheres"].tobytes().decode("utf-8").split("\n") if data["lengths"].size else []
            stripped = RejectLog.from_dict(meta["stripped"]) if "stripped" in meta else RejectLog()
            return cls(
                data["tokens"],
                data["lengths"],
                data["hashes"],
                wheres,
                meta["read"],
                RejectLog.from_dict(meta["rejected"]),
                stripped,
            )


def process_unit(unit: WorkUnit, tokenizer: TextTokenizer, data: DataConfig, dtype: np.dtype) -> UnitResult:
    """Tokenize every document of ``unit`` with ``tokenizer`` (on its own threads: 1 in a Ray actor,
    which owns one CPU), each followed by the end-of-document id."""
    src = data.sources[unit.source]
    result = UnitResult(np.empty(0, dtype), np.empty(0, np.int64), np.empty(0, np.uint64))
    texts, hashes, wheres = [], [], []
    for record in read_unit(unit, getattr(src, "text_field", "text")):
        result.read += 1
        if record.text is None:
            result.rejected.note(record.reason, record.where)
            continue
        text, reason, stripped = clean(record.text, data)
        if reason:
            result.rejected.note(reason, record.where)
            continue
        if stripped:
            result.stripped.note(CONTROL_CHARS, record.where)
        texts.append(text)
        hashes.append(content_hash(text))
        wheres.append(record.where)
    pieces: list[list[int]] = []
    for i in range(0, len(texts), ENCODE_BATCH):
        pieces.extend(tokenizer.encode_batch(texts[i : i + ENCODE_BATCH]))
    lengths = np.fromiter((len(p) + 1 for p in pieces), np.int64, len(pieces))
    tokens = np.empty(int(lengths.sum()), dtype)
    ends = np.cumsum(lengths)
    eod = tokenizer.eos_id
    for ids, end, n in zip(pieces, ends, lengths, strict=True):
        tokens[end - n : end - 1] = ids
        tokens[end - 1] = eod
    result.tokens, result.lengths, result.hashes = tokens, lengths, np.array(hashes, np.uint64)
    result.wheres = wheres
    return result


class UnitTokenizer:
    """Ray actor: holds the tokenizer (of the prepared folder ``folder``), tokenizes units handed to it."""

    def __init__(self, folder: str, eod_token: str | None, data_json: str, dtype: str):
        self.tokenizer = open_tokenizer(folder, eod_token)
        self.data = DataConfig.model_validate_json(data_json)
        self.dtype = np.dtype(dtype)

    def ready(self) -> bool:
        return True

    def run(self, unit: dict, out: str) -> dict:
        work = WorkUnit.from_dict(unit)
        result = process_unit(work, self.tokenizer, self.data, self.dtype)
        result.save(Path(out))
        return {
            "key": work.key,
            "bytes": work.size,
            "tokens": int(result.tokens.size),
            "docs": int(result.lengths.size),
        }


class LocalTokenizer:
    """A thread of the driver doing what an actor does, on the units of ``units`` (a deque the
    actors take from too), until ``stop()``: it uses the CPU time Ray's start-up leaves free.
    ``results()`` returns the summaries of the units it finished since the last call."""

    def __init__(self, folder: str, eod_token: str | None, data_json: str, dtype: str, units: deque, out: Callable):
        self.units, self.out, self.args = units, out, (folder, eod_token, data_json, dtype)
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prep-local-tokenizer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            worker = UnitTokenizer(*self.args)
            while not self._stop.is_set():
                try:
                    unit = self.units.popleft()
                except IndexError:
                    return
                self.done.put(worker.run(unit.to_dict(), self.out(unit)))
        except BaseException as exc:  # handed to the driver's thread by results()
            self.error = exc

    def stop(self) -> None:
        """Take no more units; the one in hand is finished."""
        self._stop.set()

    def results(self, wait: bool = False) -> list[dict]:
        """Summaries finished so far (with ``wait``: after the thread is done); raises what the thread raised."""
        if wait:
            self.thread.join()
        found = []
        while not self.done.empty():
            found.append(self.done.get())
        if self.error is not None:
            raise self.error
        return found
