"""Normalize and filter documents, and the content hash that drives exact dedup and the
deterministic train/validation split."""

from __future__ import annotations

import hashlib

from pipeline.config.data import DataConfig

TOO_SHORT = "too_short"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
SPLIT_BUCKETS = 1_000_000


def normalize(text: str) -> str:
    """Line endings to LF; nothing else changes (code keeps its whitespace)."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


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
