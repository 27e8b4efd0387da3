"""Paired comparisons over seeds (issue 28, item 5): the t interval against a hand computation, and
each verdict of the rule on made-up numbers."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.scaling.stats import compare, verdict_rule

T_975_3DF = 3.182446305284263  # Student t, 97.5th percentile, 3 degrees of freedom (tables)


def test_interval_is_the_t_interval_of_the_paired_differences():
    c = compare("P8 vs P1", [2.97, 2.99, 2.98, 2.96], [3.00, 3.00, 3.00, 3.00], margin=0.01)
    assert c.diffs == pytest.approx((-0.03, -0.01, -0.02, -0.04))
    half = T_975_3DF * math.sqrt(0.0005 / 3) / math.sqrt(4)  # sum of squared deviations 0.0005, n - 1 = 3
    assert c.mean == pytest.approx(-0.025)
    assert c.low == pytest.approx(-0.025 - half) and c.high == pytest.approx(-0.025 + half)
    assert c.verdict == "shown"
    wider = compare("P8 vs P1", [2.97, 2.99, 2.98, 2.96], [3.00] * 4, margin=0.01, level=0.99)
    assert wider.low < c.low and wider.high > c.high


def test_shown_ruled_out_and_inconclusive():
    assert compare("gain", [2.90, 2.91, 2.92], [3.00, 3.00, 3.01], margin=0.01).verdict == "shown"
    no_gain = compare("none", [3.001, 3.000, 3.002], [3.000, 3.001, 3.000], margin=0.01)
    assert no_gain.low > -0.01 and no_gain.high > 0 and no_gain.verdict == "ruled out"
    noisy = compare("noisy", [2.95, 3.04, 2.99], [3.00, 3.00, 3.00], margin=0.01)
    assert noisy.low < -0.01 and noisy.high > 0 and noisy.verdict == "inconclusive"
    # an interval below 0 but inside (-d, 0): a real gain, smaller than d; the rule says shown first
    small = compare("small", [2.998, 2.997, 2.998], [3.0, 3.0, 3.0], margin=0.01)
    assert -0.01 < small.low < small.high < 0 and small.verdict == "shown"


def test_a_single_pair_is_inconclusive_and_unequal_arms_are_refused():
    one = compare("one seed", [2.5], [3.0], margin=0.01)
    assert one.mean == pytest.approx(-0.5) and one.low is None and one.high is None
    assert one.verdict == "inconclusive"
    with pytest.raises(ValueError, match="same number of seeds"):
        compare("unequal", [2.9, 2.8], [3.0], margin=0.01)
    with pytest.raises(ValueError, match="same number of seeds"):
        compare("empty", [], [], margin=0.01)
    with pytest.raises(ValueError, match="margin"):
        compare("negative margin", [2.9, 2.8], [3.0, 3.0], margin=-0.01)


def test_as_dict_is_json_and_the_rule_states_its_margin():
    d = compare("P8 vs dense", [2.9, 2.8], [3.0, 3.1], margin=0.02).as_dict()
    assert json.loads(json.dumps(d)) == d and d["diffs"] == pytest.approx([-0.1, -0.3])
    rule = verdict_rule(0.02)
    assert "-0.02" in rule and "shown" in rule and "ruled out" in rule and "inconclusive" in rule
