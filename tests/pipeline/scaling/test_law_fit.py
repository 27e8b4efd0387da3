"""The honest fit (issue 28, item 6): k free down to the law's own bound 1 + k ln P > 0, the bound
flagged when the data push k onto it, k's profile-likelihood interval, and which parameters the
points identify. Made-up laws with 0.2% noise on 3 sizes x 4 stream counts."""

from __future__ import annotations

import math
import random

import pytest

from pipeline.scaling.law import Point, fit_law, identified_parameters, profile_k

SIZES = (2e5, 6e5, 2e6)
STREAMS = (1, 2, 4, 8)


def _law(k: float, seed: int = 0, noise: float = 0.002) -> list[Point]:
    rng = random.Random(seed)
    return [
        Point(n, p, (2.0 + (3e4 / (n * (k * math.log(p) + 1))) ** 0.35) * (1 + rng.gauss(0, noise)))
        for n in SIZES
        for p in STREAMS
    ]


def test_k_04_is_recovered_with_a_closed_interval_around_it():
    points = _law(0.4)
    fit = fit_law(points)
    assert fit.k == pytest.approx(0.4, abs=0.05) and not fit.k_at_bound
    interval = profile_k(points)
    assert interval.identified and interval.low < 0.4 < interval.high and interval.low < fit.k < interval.high
    assert interval.high - interval.low < 0.4  # informative, not the whole grid
    assert interval.note.startswith("95% profile-likelihood interval for k: [")
    # the ends are found by root finding, not read off the grid: a coarse grid gives the same ends
    coarse = profile_k(points, grid=[-0.2, 0.0, 0.2, 0.3, 0.6, 1.0])
    assert coarse.low == pytest.approx(interval.low, abs=0.005) and coarse.high == pytest.approx(
        interval.high, abs=0.005
    )
    assert interval.level == 0.95 and interval.as_dict()["identified"] is True
    assert fit_law(points, fixed_k=interval.high).huber > fit.huber
    assert identified_parameters(points) == {"E": True, "A": True, "alpha": True, "k": True}


def test_a_negative_k_is_recovered_negative_not_clipped_at_zero():
    points = _law(-0.1)
    fit = fit_law(points)
    assert fit.k == pytest.approx(-0.1, abs=0.05) and fit.k < 0 and not fit.k_at_bound
    assert fit.param_multiplier(8) < 1
    interval = profile_k(points)
    assert interval.identified and interval.low < -0.1 < interval.high < 0  # the interval excludes k = 0


def test_flat_losses_over_sizes_5_percent_apart_are_not_identified():
    # the same loss at every P and both sizes, give or take +-0.2% in a pattern no monotone law follows
    points = [
        Point(n, p, 3.0 * (1 + 0.002 * (-1) ** (i + j)))
        for i, n in enumerate((2e5, 2.1e5))
        for j, p in enumerate(STREAMS)
    ]
    interval = profile_k(points)
    assert not interval.identified and interval.low is None and interval.high is None
    assert interval.note.startswith("not identified")
    assert identified_parameters(points) == {"E": False, "A": False, "alpha": False, "k": False}


def test_data_that_push_k_onto_its_bound_are_flagged_not_estimated():
    # P = 8 three times worse than P = 1, 2, 4: no k of the law fits; the fit runs to 1 + k ln 8 -> 0
    rng = random.Random(1)
    points = [
        Point(n, p, (2.0 + (3e4 / n) ** 0.35) * (3 if p == 8 else 1) * (1 + rng.gauss(0, 0.002)))
        for n in SIZES
        for p in STREAMS
    ]
    fit = fit_law(points)
    assert fit.k_at_bound and fit.param_multiplier(8) < 1e-3 and fit.k > -1 / math.log(8)
    interval = profile_k(points)
    assert not interval.identified and interval.low is None
    assert interval.note.startswith("not identified") and "bound" in interval.note
    # with k held the flag stays off: a fixed k is the caller's, not an estimate
    assert not fit_law(points, fixed_k=fit.k).k_at_bound


def test_k_outside_the_law_is_refused_and_four_points_leave_no_scale():
    points = _law(0.4)
    with pytest.raises(ValueError, match="1 \\+ k ln P <= 0"):
        fit_law(points, fixed_k=-0.5)  # 1 - 0.5 ln 8 < 0
    four = [pt for pt in points if pt.params in SIZES[:2] and pt.streams in (1, 8)]
    interval = profile_k(four)
    assert not interval.identified and "degrees of freedom" in interval.note
    assert identified_parameters(four) == dict.fromkeys(("E", "A", "alpha", "k"), False)
