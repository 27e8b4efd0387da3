"""Where the main job's stages write, under ``run.output_dir``, and the names its runs go by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def stage2_key(streams: int) -> str:
    return f"stage2-p{streams}"


@dataclass(frozen=True)
class JobFolders:
    root: Path
    stage2_root: Path | None = None  # where the ParScale conversions and stage-2 runs go (default: root)

    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def consolidated(self) -> Path:
        return self.root / "convert" / "stage1-fp32"

    def init(self, streams: int) -> Path:
        return (self.stage2_root or self.root) / "convert" / f"stage2-init-p{streams}"

    def stage2(self, streams: int) -> Path:
        return (self.stage2_root or self.root) / f"stage2-p{streams}"

    @property
    def dense(self) -> Path:
        return self.root / "stage2-dense"

    @property
    def prefix_control(self) -> Path:
        return self.root / "stage2-p1-prefix"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    @property
    def report(self) -> Path:
        return self.root / "report"
