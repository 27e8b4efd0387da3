"""Check a prepared dataset against its manifest before anything reads it: every shard's .bin and
.idx exist with the sizes recorded when they were written (sha256 on request), and the tokenizer
next to them is the one the data was tokenized with. Each problem names the file and the repair."""

from __future__ import annotations

from pathlib import Path

from pipeline.utils.fs import file_sha256

from .manifest import MANIFEST_NAME, read_manifest


def dataset_problems(directory: str | Path, hashes: bool = False) -> list[str]:
    """One line per damaged, missing or foreign file of the prepared dataset in ``directory``."""
    root = Path(directory)
    manifest = read_manifest(root)
    found: list[str] = []
    recorded = manifest["tokenizer"]
    for name, sha in (recorded.get("files") or {recorded["path"]: recorded["sha256"]}).items():
        tokenizer = root / name  # every file of the tokenizer (tokenizer.json and its tokenizer_config.json)
        if not tokenizer.is_file():
            found.append(f"{tokenizer}: missing")
        elif file_sha256(tokenizer) != sha:
            found.append(
                f"{tokenizer}: not the tokenizer this data was tokenized with (sha256 differs from {root / MANIFEST_NAME})"
            )
    for source in manifest["sources"]:
        for split in source["splits"].values():
            for shard in split["shards"]:
                for ext in ("bin", "idx"):
                    path = root / f"{shard['prefix']}.{ext}"
                    size = shard.get(f"{ext}_bytes")  # manifests before sizes were recorded have none
                    if not path.is_file():
                        found.append(f"{path}: missing")
                    elif size is not None and path.stat().st_size != size:
                        found.append(f"{path}: {path.stat().st_size} bytes, {size} when written (truncated)")
                    elif hashes and file_sha256(path) != shard[f"{ext}_sha256"]:
                        found.append(f"{path}: sha256 differs from {root / MANIFEST_NAME} (corrupt)")
    return found


__all__ = ["dataset_problems"]
