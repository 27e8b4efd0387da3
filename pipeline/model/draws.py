"""Where ParScale's own tensors (the prefixes and the aggregator) draw their initial values.

``own`` (the default): from a random stream of their own, seeded from the seed the model is built
under (``torch.initial_seed()``: the trainer's ``run.seed``). The backbone then draws exactly what
the dense model of the same seed draws: P = 1, P = 8 and the one-prefix control start from one
backbone (paired seeds), and a dense model, which draws nothing from this stream, initialises as it
always did. ``shared``: drawn from the global stream in construction order, between the backbone's
layers (the earlier behaviour, which ``parscale convert to-parscale`` keeps so that a conversion
makes the same prefixes and aggregator as before)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

#: added to the model's seed for ParScale's own stream (any fixed number: the stream differs from the backbone's)
OWN_SEED_OFFSET = 0x9A25CA1E

Draws = Literal["own", "shared"]


class ParScaleDraws:
    """A context in which ParScale's tensors are built: with ``own`` the default CPU generator holds
    ParScale's stream inside it and gets its own state back on exit, so what is drawn inside neither
    consumes nor sees the backbone's stream; with ``shared`` it does nothing."""

    def __init__(self, mode: Draws = "own"):
        self.state: torch.Tensor | None = None
        if mode == "own":
            seed = (torch.initial_seed() + OWN_SEED_OFFSET) % 2**64
            self.state = torch.Generator().manual_seed(seed).get_state()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self.state is None:
            yield
            return
        outer = torch.random.get_rng_state()
        torch.random.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.random.get_rng_state()
            torch.random.set_rng_state(outer)


__all__ = ["OWN_SEED_OFFSET", "Draws", "ParScaleDraws"]
