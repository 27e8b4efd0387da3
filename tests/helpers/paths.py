"""Where the checkout, its configs and its tool caches are."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
CONFIGS = REPO / "configs"
WORKERS = Path(__file__).resolve().parent / "workers"  # scripts the multi-process tests launch
