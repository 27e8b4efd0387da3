"""The parallel scaling law L = E + (A / (N (k ln P + 1)))^alpha, fitted as the paper did: Huber
loss on log L, L-BFGS from a grid of starting points, the best end point kept."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch

PAPER_K = 0.39  # Stack-V2-Python (Chen et al. 2025): P=8 ~ 1.8x parameters


@dataclass(frozen=True)
class Point:
    params: float  # N, non-embedding parameters of the backbone
    streams: int  # P
    loss: float


@dataclass(frozen=True)
class LawFit:
    E: float
    A: float
    alpha: float
    k: float
    huber: float  # objective at the optimum (sum over points)
    rms_log_residual: float
    k_fixed: bool = False

    def predict(self, params: float, streams: int) -> float:
        return self.E + (self.A / (params * (self.k * math.log(streams) + 1))) ** self.alpha

    def param_multiplier(self, streams: int) -> float:
        """How many times the parameters P streams are worth: k ln P + 1."""
        return self.k * math.log(streams) + 1

    def as_dict(self) -> dict:
        return asdict(self)


def _log_pred(theta: torch.Tensor, log_n: torch.Tensor, log_p: torch.Tensor, fixed_k: float | None) -> torch.Tensor:
    e, a, alpha, log_k = theta
    k = torch.as_tensor(fixed_k, dtype=theta.dtype) if fixed_k is not None else log_k.exp()
    return torch.logaddexp(e.expand_as(log_n), alpha * (a - log_n - torch.log1p(k * log_p)))


def _huber(residual: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.nn.functional.huber_loss(residual, torch.zeros_like(residual), reduction="sum", delta=delta)


def fit_law(points: list[Point], delta: float = 1e-3, fixed_k: float | None = None) -> LawFit:
    """Fit E = exp(e), A = exp(a), alpha, k = exp(kappa) (or k fixed) to the points."""
    if len({p.params for p in points}) < 2 or len({p.streams for p in points}) < 2:
        raise ValueError("the fit needs at least two model sizes and two stream counts")
    log_n = torch.tensor([math.log(p.params) for p in points], dtype=torch.float64)
    log_p = torch.tensor([math.log(p.streams) for p in points], dtype=torch.float64)
    log_l = torch.tensor([math.log(p.loss) for p in points], dtype=torch.float64)
    floor = math.log(min(p.loss for p in points))
    grid = itertools.product(
        [floor - 1.5, floor - 0.5, floor - 0.1],  # e: E below every loss
        [5.0, 12.0, 20.0],  # a
        [0.15, 0.5],  # alpha
        [math.log(0.1), math.log(0.6)] if fixed_k is None else [0.0],
    )
    best: tuple[float, torch.Tensor] | None = None
    for start in grid:
        theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [theta], lr=1.0, max_iter=150, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
        )

        def closure(opt=opt, theta=theta):
            opt.zero_grad()
            loss = _huber(_log_pred(theta, log_n, log_p, fixed_k) - log_l, delta)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            value = _huber(_log_pred(theta, log_n, log_p, fixed_k) - log_l, delta).item()
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, theta.detach().clone())
    assert best is not None
    value, theta = best
    residual = (_log_pred(theta, log_n, log_p, fixed_k) - log_l).pow(2).mean().sqrt().item()
    e, a, alpha, log_k = theta.tolist()
    return LawFit(
        E=math.exp(e),
        A=math.exp(a),
        alpha=alpha,
        k=fixed_k if fixed_k is not None else math.exp(log_k),
        huber=value,
        rms_log_residual=residual,
        k_fixed=fixed_k is not None,
    )


def k_interval(ks: list[float]) -> tuple[float, float] | None:
    """The central 90% of the bootstrap's k values (None without refits)."""
    if not ks:
        return None
    return ks[int(0.05 * (len(ks) - 1))], ks[math.ceil(0.95 * (len(ks) - 1))]
