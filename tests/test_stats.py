"""Statistics over seeds: agreement with SciPy, CI coverage, TOST by hand, growth laws."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from optimorph.stats import (
    confidence_band,
    growth_exponent,
    paired_t_test,
    percentile_band,
    tost,
)


@pytest.mark.parametrize("seed", range(5))
def test_paired_t_test_agrees_with_scipy(seed):
    rng = np.random.default_rng(seed)
    n = 3 + seed * 4
    a = rng.normal(1.0, 1.0, n)
    b = a + rng.normal(0.3 * (seed - 2), 0.5, n)
    ours = paired_t_test(a, b)
    ref = sps.ttest_rel(a, b)
    assert ours.n == n
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    low, high = ref.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((low, high), rel=1e-10)
    assert ours.mean_diff == pytest.approx(np.mean(a - b), rel=1e-12)
    assert ours.note == ""


def test_paired_t_test_ci_covers_true_difference_at_nominal_rate():
    rng = np.random.default_rng(12345)
    true_diff, n, trials = 0.7, 8, 1000
    covered = 0
    for _ in range(trials):
        b = rng.normal(5.0, 2.0, n)  # seed-to-seed spread shared by both: the pairing removes it
        a = b + true_diff + rng.normal(0.0, 0.4, n)
        r = paired_t_test(a, b)
        covered += r.ci_low <= true_diff <= r.ci_high
    assert 0.93 <= covered / trials <= 0.97


def test_paired_t_test_alpha_sets_the_ci_level():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=10), rng.normal(size=10)
    wide, narrow = paired_t_test(a, b, alpha=0.01), paired_t_test(a, b, alpha=0.2)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high
    assert wide.p_value == narrow.p_value


def test_paired_t_test_degenerate_cases():
    one = paired_t_test([1.0], [2.0])
    assert one.n == 1 and math.isnan(one.p_value) and math.isnan(one.t)
    assert "n = 1" in one.note
    same = paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.t, same.p_value, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0)
    assert same.note
    shifted = paired_t_test([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert shifted.p_value == 0.0 and shifted.t == math.inf
    assert shifted.ci_low == shifted.ci_high == 0.5
    assert paired_t_test([1.0, 2.0], [1.5, 2.5]).t == -math.inf


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [1.0]), ([[1.0, 2.0]], [[1.0, 2.0]])])
def test_paired_shapes_are_checked(a, b):
    with pytest.raises(ValueError, match="1-D"):
        paired_t_test(a, b)
    with pytest.raises(ValueError, match="1-D"):
        tost(a, b, 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_give_no_test(bad):
    a, b = [1.0, bad, 3.0], [1.1, 2.0, 2.9]
    r = paired_t_test(a, b)
    assert r.n == 3 and all(math.isnan(x) for x in r[:5])
    assert "not finite" in r.note
    for relative in [False, True]:
        e = tost(a, b, 0.5, relative=relative)
        assert not e.equivalent and math.isnan(e.p_value) and "not finite" in e.note
    assert not math.isfinite(tost(b, a, 0.5, relative=True).margin)


def test_tost_equivalent_for_equal_means_and_wide_margin():
    rng = np.random.default_rng(3)
    b = rng.normal(1.0, 0.5, 10)
    a = b + rng.normal(0.0, 0.01, 10)
    r = tost(a, b, margin=0.1)
    assert r.equivalent and r.p_value < 1e-6
    assert r.margin == 0.1


def test_tost_not_equivalent_when_difference_exceeds_margin():
    rng = np.random.default_rng(4)
    b = rng.normal(1.0, 0.5, 10)
    a = b + 0.2 + rng.normal(0.0, 0.01, 10)
    r = tost(a, b, margin=0.1)
    assert not r.equivalent and r.p_value > 0.5
    # ... while a plain t-test calls the same data clearly different.
    assert paired_t_test(a, b).p_value < 1e-6


def test_tost_p_values_match_hand_computation():
    a = np.array([1.02, 0.97, 1.05, 1.01, 0.99, 1.03])
    b = np.array([1.00, 1.00, 1.01, 0.98, 1.00, 1.01])
    d = a - b
    n, m, se = d.size, d.mean(), d.std(ddof=1) / math.sqrt(d.size)
    margin = 0.04
    lower = sps.t.sf((m + margin) / se, n - 1)
    upper = sps.t.cdf((m - margin) / se, n - 1)
    r = tost(a, b, margin)
    assert r.lower_p == pytest.approx(lower, rel=1e-12)
    assert r.upper_p == pytest.approx(upper, rel=1e-12)
    assert r.p_value == max(r.lower_p, r.upper_p)
    assert r.equivalent == (r.p_value < 0.05)


def test_tost_is_the_90_percent_ci_inside_the_margin():
    rng = np.random.default_rng(5)
    for _ in range(200):
        b = rng.normal(size=6)
        a = b + rng.normal(rng.uniform(-0.3, 0.3), 0.2, 6)
        margin = rng.uniform(0.05, 0.5)
        ci = paired_t_test(a, b, alpha=0.10)
        assert tost(a, b, margin).equivalent == (-margin < ci.ci_low and ci.ci_high < margin)


def test_tost_relative_margin_scales_with_the_larger_mean_and_is_symmetric():
    a, b = np.array([10.1, 9.9, 10.2, 10.3]), np.array([10.0, 10.0, 10.0, 10.1])
    rel, absolute = tost(a, b, 0.05, relative=True), tost(a, b, 0.05 * np.mean(a))
    assert rel.margin == pytest.approx(0.05 * np.mean(a))
    assert rel.p_value == pytest.approx(absolute.p_value)
    assert tost(b, a, 0.05, relative=True).p_value == pytest.approx(rel.p_value)
    with pytest.raises(ValueError, match="margin"):
        tost(a, b, 0.0)


def test_tost_with_a_final_loss_of_exactly_zero():
    """An fp16 run can end at a loss of exactly 0: the margin must still be defined."""
    zero = np.zeros(3)
    r = tost([1e-3, 2e-3, 1e-3], zero, 0.05, relative=True)
    assert r.margin == pytest.approx(0.05 * np.mean([1e-3, 2e-3, 1e-3])) and not r.equivalent
    same = tost(zero, zero, 0.05, relative=True)
    assert same.equivalent and "every pair is equal" in same.note
    differ = tost([1.0, -1.0], [-1.0, 1.0], 0.05, relative=True)
    assert not differ.equivalent and "absolute" in differ.note


def test_tost_degenerate_cases():
    assert not tost([1.0], [1.0], 0.1).equivalent
    assert math.isnan(tost([1.0], [1.0], 0.1).p_value)
    # Exactly representable values, so the differences are exactly equal.
    inside = tost([1.25, 2.25, 3.25], [1.0, 2.0, 3.0], 0.5)
    assert inside.equivalent and inside.p_value == 0.0
    outside = tost([1.5, 2.5, 3.5], [1.0, 2.0, 3.0], 0.25)
    assert not outside.equivalent and outside.p_value == 1.0


def test_confidence_band_matches_the_paired_ci_and_skips_non_finite():
    rng = np.random.default_rng(6)
    values = rng.normal(size=(7, 4))
    mean, low, high = confidence_band(values)
    for j in range(4):
        r = paired_t_test(values[:, j], np.zeros(7))
        assert (mean[j], low[j], high[j]) == pytest.approx((r.mean_diff, r.ci_low, r.ci_high))
    values[2, 1] = np.nan
    values[3, 1] = np.inf
    mean, low, high = confidence_band(values)
    kept = np.delete(values[:, 1], [2, 3])
    r = paired_t_test(kept, np.zeros(5))
    assert (mean[1], low[1], high[1]) == pytest.approx((r.mean_diff, r.ci_low, r.ci_high))


def test_confidence_band_axis_and_small_counts():
    values = np.array([[1.0, np.nan, np.nan], [3.0, 2.0, np.nan]])
    mean, low, high = confidence_band(values.T, axis=1)
    assert mean[0] == 2.0 and low[0] < 2.0 < high[0]
    assert mean[1] == 2.0 and np.isnan(low[1]) and np.isnan(high[1])  # n = 1: no band
    assert np.isnan(mean[2]) and np.isnan(low[2])  # n = 0
    narrow = confidence_band(values[:, :1].T, axis=1, level=0.5)
    assert low[0] < narrow[1][0] < narrow[2][0] < high[0]


def test_percentile_band_matches_numpy_and_skips_non_finite():
    rng = np.random.default_rng(7)
    values = rng.lognormal(size=(9, 5))
    med, low, high = percentile_band(values, level=0.9)
    np.testing.assert_allclose(med, np.median(values, axis=0))
    np.testing.assert_allclose(low, np.percentile(values, 5, axis=0))
    np.testing.assert_allclose(high, np.percentile(values, 95, axis=0))
    values[:, 0] = np.nan
    values[0, 1] = np.inf
    med, low, high = percentile_band(values)
    assert np.isnan(med[0]) and np.isnan(low[0])
    assert med[1] == np.median(values[1:, 1])


def test_growth_exponent_recovers_power_law():
    t = np.arange(1, 200)
    k, c, r2 = growth_exponent(t, 3.0 * t**1.5)
    assert k == pytest.approx(1.5, abs=1e-12)
    assert math.exp(c) == pytest.approx(3.0, rel=1e-12)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_growth_exponent_uses_only_positive_finite_points():
    t = np.arange(0, 50, dtype=float)
    d = 0.5 * t**2.0
    d[5] = 0.0
    d[7] = np.nan
    d[9] = -1.0
    k, c, _ = growth_exponent(t, d)
    assert k == pytest.approx(2.0) and math.exp(c) == pytest.approx(0.5)
    # Seeds pooled: t [E] broadcast against d [S, E].
    k, _, r2 = growth_exponent(t[1:], np.stack([t[1:] ** 0.5, 2 * t[1:] ** 0.5]))
    assert k == pytest.approx(0.5) and r2 < 1.0


def test_growth_exponent_needs_three_points():
    assert all(math.isnan(x) for x in growth_exponent([1.0, 2.0, 3.0], [1.0, 0.0, 2.0]))
    assert all(math.isnan(x) for x in growth_exponent([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))
    k, _, r2 = growth_exponent([1.0, 2.0, 3.0], [4.0, 4.0, 4.0])
    assert k == 0.0 and math.isnan(r2)
