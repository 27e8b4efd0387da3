"""The parallel scaling law L = E + (A / (N (k ln P + 1)))^alpha, fitted as the paper did: Huber
loss on log L, L-BFGS from a grid of starting points, the best end point kept (scipy's L-BFGS-B with
the analytic gradient) -- and what the points can say about it.

k is free: the only constraint is the law's own, 1 + k ln P > 0 for every P in the data (P may be
worth less than its backbone, k < 0, but not nothing); alpha >= 0 (the law's loss does not grow
with N; alpha = 0 is "no size effect"). When the optimum sits on that bound the fit
says so (``LawFit.k_at_bound``): a bound is not an estimate. ``profile_k`` gives k's
profile-likelihood interval, ``identified_parameters`` says which of E, A, alpha, k the points
pin down (issue 28, item 6)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import brentq, minimize
from scipy.stats import f as f_dist
from threadpoolctl import threadpool_limits

PAPER_K = 0.39  # Stack-V2-Python (Chen et al. 2025): P=8 ~ 1.8x parameters

NAMES = ("E", "A", "alpha", "k")
_E, _A, _ALPHA, _K = range(4)  # internal coordinates: e = ln E, a = ln A, alpha, k
_MIN_MULTIPLIER = 1e-6  # the fit keeps 1 + k ln P_max >= this (the law needs > 0)
_AT_BOUND = 1e-3  # an optimum with 1 + k ln P_max below this sits on the bound
_WIDE = math.log(1000.0)  # identified_parameters: E, A, alpha profiled over a factor 1000 either way
# profile_k's grid in ln(1 + k ln P_max): P_max worth 0.05x to 20x its backbone in steps of 0.25, then on
# to the bound below and to 100x above
_K_GRID_LOG_MULTIPLIER = [
    math.log(_MIN_MULTIPLIER),
    -10.0,
    -7.5,
    -5.5,
    -4.0,
    *np.linspace(-3.0, 3.0, 25),
    3.5,
    4.0,
    4.6,
]
_PROFILE_TOL = (1e-11, 1e-9)  # L-BFGS-B's ftol, gtol in a profile's refits: D to ~0.01, 3-5x faster


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
    k_at_bound: bool = False  # the optimum pushed 1 + k ln P_max to ~0: k is a bound, not an estimate

    def predict(self, params: float, streams: int) -> float:
        return self.E + (self.A / (params * (self.k * math.log(streams) + 1))) ** self.alpha

    def param_multiplier(self, streams: int) -> float:
        """How many times the parameters P streams are worth: k ln P + 1."""
        return self.k * math.log(streams) + 1

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KInterval:
    """k's profile-likelihood interval; a side the profile never closes within the grid is None."""

    low: float | None
    high: float | None
    level: float
    identified: bool  # closed on both sides
    note: str  # one line for a report: the interval, or "not identified: ..." and why

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Data:
    log_n: np.ndarray
    log_p: np.ndarray
    log_l: np.ndarray
    delta: float

    @property
    def n(self) -> int:
        return len(self.log_l)

    @property
    def log_p_max(self) -> float:
        return float(self.log_p.max())

    def k_of(self, log_multiplier: float) -> float:
        """The k at which P_max is worth exp(log_multiplier) times its backbone."""
        return math.expm1(log_multiplier) / self.log_p_max

    def log_multiplier(self, k: float) -> float:
        """ln(1 + k ln P_max), the inverse of k_of."""
        return math.log1p(k * self.log_p_max)


def _data(points: list[Point], delta: float) -> _Data:
    if len({p.params for p in points}) < 2 or len({p.streams for p in points}) < 2:
        raise ValueError("the fit needs at least two model sizes and two stream counts")
    if min(p.streams for p in points) < 1:
        raise ValueError("stream counts start at 1")
    return _Data(
        np.log([p.params for p in points]),
        np.log([float(p.streams) for p in points]),
        np.log([p.loss for p in points]),
        delta,
    )


def _predict_log(theta: np.ndarray, data: _Data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log L predicted at theta = (e, a, alpha, k), with the power term's log base and exponent."""
    e, a, alpha, k = theta
    base = a - data.log_n - np.log1p(k * data.log_p)
    z = alpha * base
    return np.logaddexp(e, z), base, z


def _objective(free: np.ndarray, index: list[int], theta: np.ndarray, data: _Data) -> tuple[float, np.ndarray]:
    """The Huber loss of log L's residuals, and its gradient in the free coordinates (index); theta
    holds the fixed ones."""
    theta = theta.copy()
    theta[index] = free
    alpha, k = theta[_ALPHA], theta[_K]
    pred, base, z = _predict_log(theta, data)
    r = pred - data.log_l
    small = np.abs(r) <= data.delta
    value = np.where(small, 0.5 * r * r, data.delta * (np.abs(r) - 0.5 * data.delta)).sum()
    dr = np.where(small, r, data.delta * np.sign(r))  # d huber / d residual
    w_e, w_z = np.exp(theta[_E] - pred), np.exp(z - pred)  # d pred / d e, d pred / d z
    grad = np.array(
        [
            (dr * w_e).sum(),
            (dr * w_z * alpha).sum(),
            (dr * w_z * base).sum(),
            (dr * w_z * -alpha * data.log_p / (1 + k * data.log_p)).sum(),
        ]
    )
    return float(value), grad[index]


def _grid_starts(data: _Data) -> list[np.ndarray]:
    """The grid of starting points (e, a, alpha, k); k's starts put P_max at 0.75x and 1.9x its
    backbone (k -0.12 and 0.43 at P_max = 8)."""
    floor = float(data.log_l.min())
    return [
        np.array(start)
        for start in itertools.product(
            [floor - 1.5, floor - 0.5, floor - 0.1],  # e: E below every loss
            [5.0, 12.0, 20.0],  # a
            [0.15, 0.5, 2.0],  # alpha
            [data.k_of(math.log(m)) for m in (0.75, 1.9)],  # k
        )
    ]


def _minimize(
    data: _Data, fixed: dict[int, float], starts: list[np.ndarray], tol: tuple[float, float] = (1e-15, 1e-12)
) -> tuple[float, np.ndarray]:
    """The lowest Huber loss from the starts with the coordinates in fixed held: (loss, theta)."""
    index = [i for i in range(4) if i not in fixed]
    k_min = (_MIN_MULTIPLIER - 1) / data.log_p_max
    lower = {_ALPHA: 0.0, _K: k_min}  # alpha >= 0: the law's loss does not grow with N
    bounds = [(lower.get(i), None) for i in index]
    if _K in fixed and 1 + fixed[_K] * data.log_p_max <= 0:
        raise ValueError(f"k = {fixed[_K]} makes 1 + k ln P <= 0 at P = {math.exp(data.log_p_max):g}")
    best: tuple[float, np.ndarray] | None = None
    seen = set()
    with threadpool_limits(1, user_api="blas"):  # BLAS threads on 4x4 problems: 10x slower on a busy machine
        for start in starts:
            theta = start.copy()
            for i, v in fixed.items():
                theta[i] = v
            theta[_K], theta[_ALPHA] = max(theta[_K], k_min), max(theta[_ALPHA], 0.0)
            key = tuple(np.round(theta[index], 12))
            if key in seen:  # starts that differ only in fixed coordinates
                continue
            seen.add(key)
            res = minimize(
                _objective,
                theta[index],
                args=(index, theta, data),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 1000, "ftol": tol[0], "gtol": tol[1]},
            )
            if math.isfinite(res.fun) and (best is None or res.fun < best[0]):
                theta[index] = res.x
                best = (float(res.fun), theta)
    assert best is not None
    return best


def _law_fit(data: _Data, loss: float, theta: np.ndarray, k_fixed: bool) -> LawFit:
    e, a, alpha, k = (float(v) for v in theta)
    pred, _, _ = _predict_log(theta, data)
    return LawFit(
        E=math.exp(e),
        A=math.exp(a),
        alpha=alpha,
        k=k,
        huber=loss,
        rms_log_residual=float(np.sqrt(np.mean((pred - data.log_l) ** 2))),
        k_fixed=k_fixed,
        k_at_bound=not k_fixed and 1 + k * data.log_p_max < _AT_BOUND,
    )


def fit_law(points: list[Point], delta: float = 1e-3, fixed_k: float | None = None) -> LawFit:
    """Fit E = exp(e), A = exp(a), alpha and k (or k fixed) to the points: L-BFGS-B from every start
    of a grid, the best end point kept. k is held only to 1 + k ln P_max > 0 (the law's own domain),
    alpha to >= 0; ``k_at_bound`` says when the optimum sits on k's bound (then k is no estimate)."""
    data = _data(points, delta)
    if fixed_k is not None:
        return _law_fit(data, *_minimize(data, {_K: float(fixed_k)}, _grid_starts(data)), True)
    return _law_fit(data, *_fit_free(data), False)


def _fit_free(data: _Data) -> tuple[float, np.ndarray]:
    """The free fit: (loss, theta). Near k's bound the law is steep in k (ln(1 + k ln P) diverges) and
    L-BFGS-B may stop short of it; there a refit with k held on the bound is kept when lower."""
    loss, theta = _minimize(data, {}, _grid_starts(data))
    if 1 + theta[_K] * data.log_p_max < _AT_BOUND:
        on_bound = _minimize(data, {_K: (_MIN_MULTIPLIER - 1) / data.log_p_max}, [theta, *_grid_starts(data)])
        if on_bound[0] < loss:
            loss, theta = on_bound
    return loss, theta


class _Profile:
    """The profile statistic of one coordinate held at a value.

    The Huber objective rho is read as a negative log-likelihood up to a scale lambda, and the
    statistic of a coordinate held at v is D(v) = 2 (rho(v) - rho_min) / lambda, where rho(v) is the
    objective refitted with that coordinate fixed. For residuals inside the Huber threshold rho is
    sum r^2 / 2 and this is the Gaussian likelihood ratio with lambda = sigma^2. Beyond the threshold
    rho grows linearly, and the general M-estimation result (the drop-in-dispersion test, Schrader &
    Hettmansperger 1980; Ronchetti 1982) gives D ~ chi2(1) with lambda = E[psi^2] / E[psi'], psi = rho'
    = r clipped to +-delta. It is estimated at the optimum as (sum psi(r_i)^2 / (n - 4)) / (m / n),
    m the residuals inside the threshold (read as 1 when none is: the widest interval); with every residual
    inside it is sum r^2 / (n - 4) = 2 rho_min / (n - 4), the usual variance estimate. As the scale is
    estimated, the cutoff is F(1, n - 4)'s quantile (the squared t), which tends to chi2(1)'s as n
    grows. The approximations: residuals independent with one scale, and the profile near-quadratic
    near its minimum; with a handful of points the interval is a guide, not an exact coverage. Each
    refit starts from its neighbour's optimum and the fit's grid; a refit that misses a better basin
    overstates D, so on degenerate data an interval can read narrower than it is, never wider."""

    def __init__(self, data: _Data, level: float):
        self.data = data
        self.level = level
        self.loss_min, self.theta_hat = _fit_free(data)
        self.fit = _law_fit(data, self.loss_min, self.theta_hat, False)
        r = _predict_log(self.theta_hat, data)[0] - data.log_l
        dof = data.n - 4
        inside = max(int((np.abs(r) <= data.delta).sum()), 1)
        psi = np.clip(r, -data.delta, data.delta)
        self.scale = float((psi**2).sum() / dof / (inside / data.n)) if dof > 0 else math.nan
        self.scale = max(self.scale, 1e-300)
        self.cutoff = float(f_dist.ppf(level, 1, dof)) if dof > 0 else math.nan
        self.lower_loss_seen = math.inf

    @property
    def usable(self) -> bool:
        return math.isfinite(self.cutoff)

    def stat(self, index: int, value: float, warm: np.ndarray) -> tuple[float, np.ndarray]:
        """D at coordinate index held at value, refitted from warm and the grid: (D, theta)."""
        loss, theta = _minimize(self.data, {index: value}, [warm, *_grid_starts(self.data)], _PROFILE_TOL)
        self.lower_loss_seen = min(self.lower_loss_seen, loss)
        return max(2 * (loss - self.loss_min) / self.scale, 0.0), theta

    def side(self, index: int, centre: float, coords: Sequence[float], to_value, refine: bool) -> float | None:
        """Walk coords (a coordinate of parameter index, from the optimum's centre outward; to_value
        maps one to the parameter) until D passes the cutoff: the parameter's value where it does (by
        root finding on the coordinate when refine, else the first coordinate past it), or None when
        it never does (the side is open within the grid)."""
        inside, warm = centre, self.theta_hat
        for c in coords:
            d, theta = self.stat(index, to_value(c), warm)
            if d > self.cutoff:
                if refine:
                    c = self._crossing(index, to_value, inside, c, warm)
                return to_value(c)
            inside, warm = c, theta
        return None

    def _crossing(self, index: int, to_value, inside: float, outside: float, warm: np.ndarray) -> float:
        """The coordinate between inside and outside where D crosses the cutoff."""

        def excess(c: float) -> float:
            return self.stat(index, to_value(c), warm)[0] - self.cutoff

        return float(brentq(excess, inside, outside, xtol=1e-3 * abs(outside - inside)))


def _outward(coords: Sequence[float], centre: float) -> tuple[list[float], list[float]]:
    """The coordinates below centre and those above it, each nearest first."""
    ordered = sorted(coords)
    return [c for c in reversed(ordered) if c < centre], [c for c in ordered if c > centre]


def _k_note(low: float | None, high: float | None, lo_end: float, hi_end: float, prof: _Profile) -> str:
    pct = f"{100 * prof.level:g}%"
    if low is not None and high is not None:
        return f"{pct} profile-likelihood interval for k: [{low:.3f}, {high:.3f}]"
    bound = "; the fit's k sits on the bound 1 + k ln P_max > 0, not an estimate" if prof.fit.k_at_bound else ""
    below = f"closes below at {low:.3f}" if low is not None else f"is open below (k = {lo_end:.3f} still fits)"
    above = f"closes above at {high:.3f}" if high is not None else f"is open above (k = {hi_end:.3f} still fits)"
    return f"not identified: k's {pct} profile interval {below} and {above}{bound}"


def _k_interval(prof: _Profile, grid: Sequence[float] | None, refine: bool = True) -> KInterval:
    """k's interval, walked in u = ln(1 + k ln P_max) (P_max's parameter multiplier, in log): k's
    scale near its bound, where the law changes fastest."""
    data = prof.data
    if not prof.usable:
        note = f"not identified: {data.n} points leave no degrees of freedom for the residual scale (need > 4)"
        return KInterval(None, None, prof.level, False, note)
    if grid is None:
        coords = list(_K_GRID_LOG_MULTIPLIER)
    else:
        coords = [data.log_multiplier(k) for k in grid if 1 + k * data.log_p_max >= _MIN_MULTIPLIER]
    centre = data.log_multiplier(prof.fit.k)
    below, above = _outward(coords, centre)
    low = prof.side(_K, centre, below, data.k_of, refine)
    high = prof.side(_K, centre, above, data.k_of, refine)
    lo_end = data.k_of(below[-1]) if below else prof.fit.k
    hi_end = data.k_of(above[-1]) if above else prof.fit.k
    note = _k_note(low, high, lo_end, hi_end, prof)
    if prof.lower_loss_seen < prof.loss_min - 1e-9 * max(1.0, prof.loss_min):
        note += "; a refit with k held found a lower objective than the free fit (the fit is not at its optimum)"
    return KInterval(low, high, prof.level, low is not None and high is not None, note)


def profile_k(
    points: list[Point], delta: float = 1e-3, level: float = 0.95, grid: Sequence[float] | None = None
) -> KInterval:
    """k's profile-likelihood interval at level (see ``_Profile`` for the statistic and its
    approximation): the k whose refit, every other parameter free, stays within the cutoff of the
    best fit. grid: the k values walked outward from the estimate (default: P_max worth from 1e-6x,
    the law's bound, to 100x its backbone, in steps of 0.25 in the log between 0.05x and 20x);
    each end is refined by root finding. A side still inside the cutoff at the grid's end is open
    (None): the note then says "not identified"."""
    return _k_interval(_Profile(_data(points, delta), level), grid)


def identified_parameters(points: list[Point], delta: float = 1e-3, level: float = 0.95) -> dict[str, bool]:
    """Which of E, A, alpha, k the points identify: a parameter is identified when its profile
    statistic passes the cutoff on both sides within a wide grid -- E, A and alpha over a factor of
    1000 either way of the estimate (12 steps in the log, growing outward), k over ``profile_k``'s
    grid. alpha at its bound 0 (no size effect) is not identified."""
    prof = _Profile(_data(points, delta), level)
    if not prof.usable:
        return dict.fromkeys(NAMES, False)
    steps = _WIDE * np.array([0.01, 0.03, 0.06, 0.1, 0.15, 0.22, 0.3, 0.4, 0.52, 0.66, 0.82, 1.0])
    walks = {  # coordinate at the optimum, and the map from the walked coordinate to the parameter
        "E": (_E, float(prof.theta_hat[_E]), float),
        "A": (_A, float(prof.theta_hat[_A]), float),
        "alpha": (_ALPHA, math.log(max(float(prof.theta_hat[_ALPHA]), 1e-300)), math.exp),
    }
    out = {}
    for name, (index, centre, to_value) in walks.items():
        out[name] = all(
            prof.side(index, centre, list(centre + sign * steps), to_value, refine=False) is not None
            for sign in (-1, 1)
        )
    out["alpha"] = out["alpha"] and prof.fit.alpha > 0
    out["k"] = _k_interval(prof, None, refine=False).identified
    return out


def k_interval(ks: list[float]) -> tuple[float, float] | None:
    """The central 90% of the bootstrap's k values (None without refits)."""
    if not ks:
        return None
    return ks[int(0.05 * (len(ks) - 1))], ks[math.ceil(0.95 * (len(ks) - 1))]
