"""Normalize and filter documents, and the content hash that drives exact dedup and the
deterministic train/validation split."""

from __future__ import annotations

import hashlib
import re

from pipeline.config.data import DataConfig

TOO_SHORT = "too_short"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
CONTROL_CHARS = "control_chars"  # the reject reason (data.control_chars: reject) and the stripped count's name
SPLIT_BUCKETS = 1_000_000

# C0 controls but tab, newline and form feed (\r is already a newline), DEL, and the C1 controls
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def normalize(text: str) -> str:
    """Line endings to LF; nothing else changes (code keeps its whitespace)."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def clean(raw: str, data: DataConfig) -> tuple[str, str | None, bool]:
    """The document as it is kept, its reject reason (None: kept), and whether control characters
    were stripped from it (data.control_chars)."""
    text = normalize(raw)
    if data.control_chars != "keep" and _CONTROL.search(text):
        if data.control_chars == "reject":
            return text, CONTROL_CHARS, False
        text = _CONTROL.sub("", text)
        return text, reject_reason(text, data), True
    return text, reject_reason(text, data), False


def reject_reason(text: str, data: DataConfig) -> str | None:
    if len(text) < data.min_chars or not text.strip():
        return TOO_SHORT
    if data.max_chars is not None and len(text) > data.max_chars:
        return TOO_LONG
    return None


def content_hash(text: str) -> int:
    """64-bit content hash (unsigned), stable across processes and machines."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def is_validation(doc_hash: int, val_fraction: float) -> bool:
    return (doc_hash % SPLIT_BUCKETS) < round(val_fraction * SPLIT_BUCKETS)
