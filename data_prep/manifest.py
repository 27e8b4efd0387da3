"""The manifest: what a prep job read, kept, rejected and wrote, with the tokenizer's hash and
the resolved config. Training reads it to find shards and to refuse data from another tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.utils.fs import atomic_write_text, file_sha256, read_format_json

MANIFEST_NAME = "manifest.json"
FORMAT = "parscale-prep/1"


class ManifestError(UserError):
    pass


def write_manifest(out: Path, manifest: dict) -> Path:
    return atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory: str | Path) -> dict:
    return read_format_json(
        Path(directory) / MANIFEST_NAME, FORMAT, ManifestError, "run 'parscale prep' for this data first"
    )


def verify_tokenizer(directory: str | Path, tokenizer_path: str | Path) -> None:
    """Refuse data that was tokenized with a different sentencepiece model than ``tokenizer_path``."""
    manifest = read_manifest(directory)
    expected = manifest["tokenizer"]["sha256"]
    actual = file_sha256(tokenizer_path)
    if actual != expected:
        raise ManifestError(
            f"{Path(directory) / MANIFEST_NAME}: data was tokenized with tokenizer sha256 {expected[:16]}..., "
            f"but {tokenizer_path} has sha256 {actual[:16]}...; re-run 'parscale prep' with this tokenizer"
        )


def shard_prefixes(directory: str | Path, split: str) -> list[tuple[str, float, list[str]]]:
    """(source name, weight, shard path prefixes) for every source with data in ``split``."""
    manifest = read_manifest(directory)
    root = Path(directory)
    return [
        (src["name"], src["weight"], [str(root / s["prefix"]) for s in src["splits"][split]["shards"]])
        for src in manifest["sources"]
        if src["splits"][split]["shards"]
    ]
