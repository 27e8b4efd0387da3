"""The parallel scaling law L = E + (A / (N (k ln P + 1)))^alpha, fitted as the paper did: Huber
loss on log L, L-BFGS from a grid of starting points, the best end point kept (scipy's L-BFGS-B,
with the analytic gradient and k bounded below by 0)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

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


def _objective(
    theta: np.ndarray, log_n: np.ndarray, log_p: np.ndarray, log_l: np.ndarray, delta: float, fixed_k: float | None
) -> tuple[float, np.ndarray]:
    """The Huber loss of log L's residuals at theta = (e, a, alpha[, k]), and its gradient."""
    e, a, alpha = theta[:3]
    k = theta[3] if fixed_k is None else fixed_k
    base = a - log_n - np.log1p(k * log_p)
    z = alpha * base
    pred = np.logaddexp(e, z)
    r = pred - log_l
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    dr = np.where(small, r, delta * np.sign(r))  # d huber / d residual
    w_e, w_z = np.exp(e - pred), np.exp(z - pred)  # d pred / d e, d pred / d z
    grad = [(dr * w_e).sum(), (dr * w_z * alpha).sum(), (dr * w_z * base).sum()]
    if fixed_k is None:
        grad.append((dr * w_z * -alpha * log_p / (1 + k * log_p)).sum())
    return float(value), np.array(grad)


def fit_law(points: list[Point], delta: float = 1e-3, fixed_k: float | None = None) -> LawFit:
    """Fit E = exp(e), A = exp(a), alpha and k >= 0 (or k fixed) to the points: L-BFGS-B (k bounded
    below by 0, where P adds nothing) from every start of a grid, the best end point kept."""
    if len({p.params for p in points}) < 2 or len({p.streams for p in points}) < 2:
        raise ValueError("the fit needs at least two model sizes and two stream counts")
    log_n = np.log([p.params for p in points])
    log_p = np.log([float(p.streams) for p in points])
    log_l = np.log([p.loss for p in points])
    floor = float(log_l.min())
    grid = itertools.product(
        [floor - 1.5, floor - 0.5, floor - 0.1],  # e: E below every loss
        [5.0, 12.0, 20.0],  # a
        [0.15, 0.5],  # alpha
        [0.1, 0.6] if fixed_k is None else [None],
    )
    bounds = [(None, None)] * 3 + ([(0.0, None)] if fixed_k is None else [])
    best = None
    with threadpool_limits(1, user_api="blas"):  # BLAS threads on 4x4 problems: 10x slower on a busy machine
        for start in grid:
            x0 = np.array([v for v in start if v is not None])
            res = minimize(
                _objective,
                x0,
                args=(log_n, log_p, log_l, delta, fixed_k),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12},
            )
            if math.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
    assert best is not None
    e, a, alpha = best.x[:3]
    k = fixed_k if fixed_k is not None else float(best.x[3])
    pred = np.logaddexp(e, alpha * (a - log_n - np.log1p(k * log_p)))
    return LawFit(
        E=math.exp(e),
        A=math.exp(a),
        alpha=float(alpha),
        k=k,
        huber=float(best.fun),
        rms_log_residual=float(np.sqrt(np.mean((pred - log_l) ** 2))),
        k_fixed=fixed_k is not None,
    )


def k_interval(ks: list[float]) -> tuple[float, float] | None:
    """The central 90% of the bootstrap's k values (None without refits)."""
    if not ks:
        return None
    return ks[int(0.05 * (len(ks) - 1))], ks[math.ceil(0.95 * (len(ks) - 1))]
