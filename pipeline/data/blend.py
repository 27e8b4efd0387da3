"""A deterministic, infinite order of training samples over several weighted sources.

Sample g of the run comes from source ``dataset_index[g]`` (megatron-core's compiled
``build_blending_indices``: at every position, the source furthest below its weight share), as that
source's ``k``-th draw, ``k = dataset_sample_index[g]``. Draw k of a source of n rows is row
``perm(seed, source, k // n)[k % n]``: every row once per pass, in a fresh order each pass. The
order depends only on the seed, the weights and the source sizes, so resuming at sample g (or
changing the data-parallel size) replays exactly the same stream."""

from __future__ import annotations

import numpy as np


class BlendedOrder:
    def __init__(self, sizes: list[int], weights: list[float], total: int, seed: int):
        if not sizes or min(sizes) <= 0:
            raise ValueError("every blended source needs at least one row")
        from megatron.core.datasets import helpers

        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        self.dataset_index = np.zeros(total, dtype=np.int16)
        self.dataset_sample_index = np.zeros(total, dtype=np.int64)
        helpers.build_blending_indices(self.dataset_index, self.dataset_sample_index, w, len(sizes), total, False)
        self.sizes, self.seed = sizes, seed
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.dataset_index)

    def _perm(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, source, epoch])
            self._perms[key] = rng.permutation(self.sizes[source])
        return self._perms[key]

    def __getitem__(self, g: int) -> tuple[int, int]:
        """(source, row) of global sample ``g``."""
        source = int(self.dataset_index[g])
        k = int(self.dataset_sample_index[g])
        n = self.sizes[source]
        return source, int(self._perm(source, k // n)[k % n])
