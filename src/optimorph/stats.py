"""Statistics over seeds: paired tests, equivalence tests, bands, growth laws (DESIGN.md section 3).

Everything here is plain NumPy/SciPy on arrays of finished results, so a verdict can be recomputed
from stored files. The test, the margin and the level are arguments with stated defaults, to be
fixed in the experiment's recipe before the runs (STYLE.md item 11), not chosen after seeing the
data.

A plain t-test answers "is there evidence of a difference?"; a p-value above 0.05 only says the
data could not show one (too few seeds, too much noise), never that the two are the same. To claim
equivalence use ``tost`` with a margin stated in advance.

>>> import numpy as np
>>> a = np.array([1.00, 1.02, 0.98, 1.01, 0.99])
>>> b = a + np.array([0.001, -0.002, 0.0, 0.002, -0.001])
>>> round(paired_t_test(a, b).p_value, 3)
1.0
>>> tost(a, b, margin=0.01).equivalent
True
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

__all__ = [
    "PairedTest",
    "Tost",
    "confidence_band",
    "growth_exponent",
    "paired_t_test",
    "percentile_band",
    "tost",
]


_NON_FINITE = "a value is not finite (a diverged seed?): no test; drop that seed from both"


class PairedTest(NamedTuple):
    """Result of ``paired_t_test``: the mean of a - b over seeds, its CI, t, two-sided p and n.

    ``note`` is empty unless the test is degenerate (a non-finite value, fewer than two pairs,
    or differences with zero variance); it then says why p is what it is.
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    n: int
    note: str = ""


class Tost(NamedTuple):
    """Result of ``tost``: the TOST p-value (max of the two one-sided p-values), both one-sided
    p-values, the absolute margin used, and whether equivalence is shown at the given alpha."""

    p_value: float
    lower_p: float
    upper_p: float
    margin: float
    equivalent: bool
    note: str = ""


def paired_t_test(a, b, *, alpha: float = 0.05) -> PairedTest:
    """Two-sided paired t-test of mean(a - b) = 0 over seeds, with a (1 - alpha) CI of the mean.

    With d_i = a_i - b_i (pairs share a seed index), n pairs, mean m and sample std s (ddof 1):
    t = m / (s / sqrt(n)), p = 2 P(T_{n-1} > |t|), CI = m -+ t_{1-alpha/2, n-1} s / sqrt(n).
    Agrees with ``scipy.stats.ttest_rel`` where that is defined; unlike it, the degenerate cases
    give a definite answer with a note instead of NaN and a warning:

    - a non-finite value (a diverged seed): mean, t, p and the CI are NaN. No pairs are dropped
      silently: a seed that diverged for one optimizer and not the other is itself a difference,
      which the caller reports; to test the remaining seeds, drop that seed from both.
    - n < 2: no variance estimate, so t, p and the CI are NaN.
    - all differences exactly zero: t = 0, p = 1, CI = [0, 0].
    - all differences equal and nonzero: t = +-inf, p = 0, CI = [m, m] (no noise at all, e.g.
      deterministic runs; the difference is certain).

    A p-value above alpha is not evidence that a and b are equivalent; use ``tost`` for that.

    Args:
      a, b: 1-D arrays of the same length, one value per seed.
      alpha: 1 - the confidence level of the interval (default 0.05: a 95% CI).

    Returns:
      A ``PairedTest``.

    Raises:
      ValueError: shapes differ or are not 1-D.

    >>> r = paired_t_test([1.0, 2.0, 3.0, 4.0], [0.9, 2.1, 2.7, 3.8])
    >>> r.n, round(r.mean_diff, 3), r.ci_low < r.mean_diff < r.ci_high
    (4, 0.125, True)
    >>> paired_t_test([1.0, 2.0], [1.0, 2.0])[3:5]
    (0.0, 1.0)
    """
    d = _paired_differences(a, b)
    _check_alpha(alpha)
    n = d.size
    if not np.isfinite(d).all():
        nan = math.nan
        return PairedTest(nan, nan, nan, nan, nan, n, _NON_FINITE)
    if n < 2:
        mean = float(d[0]) if n else math.nan
        note = f"n = {n} < 2 pairs: no variance estimate, so no test"
        return PairedTest(mean, math.nan, math.nan, math.nan, math.nan, n, note)
    if np.all(d == d[0]):
        # Zero variance: t is 0/0 or m/0. The data leave no doubt either way, so say so instead of
        # returning NaN (scipy's answer). d[0], not d.mean(): a sum of equal values can round.
        mean = float(d[0])
        if mean == 0.0:
            return PairedTest(0.0, 0.0, 0.0, 0.0, 1.0, n, "all differences are exactly zero")
        note = "all differences are equal and nonzero (zero variance)"
        return PairedTest(mean, mean, mean, math.copysign(math.inf, mean), 0.0, n, note)
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    t = mean / se
    p = float(2.0 * sps.t.sf(abs(t), n - 1))
    half = float(sps.t.ppf(1.0 - alpha / 2.0, n - 1)) * se
    return PairedTest(mean, mean - half, mean + half, t, p, n)


def tost(a, b, margin: float, *, relative: bool = False, alpha: float = 0.05) -> Tost:
    """Paired two one-sided tests (TOST) for equivalence of a and b within +-margin.

    With d_i = a_i - b_i, mean m, standard error se = s / sqrt(n) and df = n - 1, the two null
    hypotheses are mu <= -margin and mu >= +margin:

      lower_p = P(T_df > (m + margin) / se),   upper_p = P(T_df < (m - margin) / se),

    and p = max(lower_p, upper_p). Equivalence is shown when p < alpha, which is the same as the
    (1 - 2 alpha) CI of the mean difference (90% for alpha = 0.05) lying inside (-margin, margin).

    Why not a plain t-test: its p > 0.05 means "no difference detected", which few seeds or much
    noise produce just as well as true equality. TOST puts the burden of proof on equivalence.

    Args:
      a, b: 1-D arrays of the same length, one value per seed (paired by seed index).
      margin: the equivalence margin, > 0, fixed before seeing the data.
      relative: if True, the margin is a fraction of max(|mean(a)|, |mean(b)|): symmetric in
        a and b, and defined when one mean is 0 (when both are exactly 0, equivalence holds
        only if every pair is equal).
      alpha: the significance level of each one-sided test (default 0.05).

    Returns:
      A ``Tost`` whose ``margin`` is the absolute margin used. With n < 2 or a non-finite value
      (a diverged seed; see ``paired_t_test``) the p-values are NaN and ``equivalent`` is False;
      with zero-variance differences each one-sided p is 0 or 1.

    Raises:
      ValueError: as for ``paired_t_test``; margin <= 0.

    >>> r = tost([1.0, 1.1, 0.9, 1.0], [1.0, 1.0, 1.0, 1.05], margin=0.5)
    >>> r.equivalent, r.p_value == max(r.lower_p, r.upper_p)
    (True, True)
    >>> tost([2.0, 2.1, 1.9], [1.0, 1.0, 1.0], margin=0.05, relative=True).equivalent
    False
    """
    d = _paired_differences(a, b)
    _check_alpha(alpha)
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    n = d.size
    if relative:
        # Symmetric in a and b (swapping them gives the same test); NaN if either is not finite.
        means = [abs(float(np.mean(np.asarray(x, dtype=np.float64)))) for x in (a, b)]
        scale = max(means) if all(math.isfinite(m) for m in means) else math.nan
        if scale == 0.0:  # both means exactly 0: only identical values are within the margin
            same = bool(np.all(d == 0)) and n >= 2
            note = ("both means are exactly 0 and every pair is equal" if same else
                    "both means are exactly 0, so a relative margin is 0; give an absolute one")
            return Tost(0.0 if same else math.nan, 0.0, 0.0, 0.0, same, note)  # fmt: skip
        margin = margin * scale
    if not np.isfinite(d).all():
        return Tost(math.nan, math.nan, math.nan, margin, False, _NON_FINITE)
    if n < 2:
        note = f"n = {n} < 2 pairs: no variance estimate, so no test"
        return Tost(math.nan, math.nan, math.nan, margin, False, note)
    mean = float(d[0]) if np.all(d == d[0]) else float(d.mean())
    if np.all(d == d[0]):
        # Zero variance: each one-sided statistic is +-inf (or 0/0 exactly on the boundary, where
        # the null is not rejected).
        lower_p = 0.0 if mean > -margin else 1.0
        upper_p = 0.0 if mean < margin else 1.0
        p = max(lower_p, upper_p)
        return Tost(p, lower_p, upper_p, margin, p < alpha, "all differences are equal")
    se = float(d.std(ddof=1)) / math.sqrt(n)
    lower_p = float(sps.t.sf((mean + margin) / se, n - 1))
    upper_p = float(sps.t.cdf((mean - margin) / se, n - 1))
    p = max(lower_p, upper_p)
    return Tost(p, lower_p, upper_p, margin, bool(p < alpha))


def confidence_band(
    values, axis: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over ``axis`` (seeds) and a t-distribution confidence band for that mean.

    mean -+ t_{(1+level)/2, n-1} s / sqrt(n), with n the number of finite entries at each position:
    non-finite entries (a diverged seed) drop out where they occur instead of turning the mean
    into NaN. Positions with n < 2 get a NaN band (and a NaN mean where n = 0), without warnings.

    This is a band for the *mean*, which narrows as seeds are added; for the spread of single
    runs use ``percentile_band``.

    Returns:
      (mean, low, high), each of ``values``'s shape without ``axis``.

    >>> m, lo, hi = confidence_band(np.array([[1.0, 2.0], [3.0, 2.0], [2.0, np.nan]]))
    >>> m.tolist(), bool(lo[1] == hi[1] == 2.0), bool(lo[0] < 2.0 < hi[0])
    ([2.0, 2.0], True, True)
    """
    _check_level(level)
    x = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    finite = np.isfinite(x)
    n = finite.sum(axis=0)
    x0 = np.where(finite, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x0.sum(axis=0) / n
        var = np.where(finite, (x0 - mean) ** 2, 0.0).sum(axis=0) / (n - 1)
        # t.ppf with df <= 0 is NaN, which is the band we want there.
        half = sps.t.ppf(0.5 + level / 2.0, np.where(n >= 2, n - 1, np.nan)) * np.sqrt(var / n)
    mean = np.where(n > 0, mean, np.nan)
    return mean, mean - half, mean + half


def percentile_band(
    values, axis: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median over ``axis`` (seeds) and the central ``level`` percentile range of the runs.

    The band holds the middle ``level`` of the runs (2.5th to 97.5th percentile by default, with
    linear interpolation; with few seeds that is close to min-max). Non-finite entries drop out;
    positions with no finite entry are NaN. Unlike a mean -+ t band it never goes below the
    smallest run, so it stays drawable on log axes.

    Returns:
      (median, low, high), each of ``values``'s shape without ``axis``.

    >>> med, lo, hi = percentile_band(np.arange(1.0, 102.0)[:, None])
    >>> med.tolist(), lo.round(6).tolist(), hi.round(6).tolist()
    ([51.0], [3.5], [98.5])
    """
    _check_level(level)
    x = np.asarray(values, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    q = [0.5, 0.5 - level / 2.0, 0.5 + level / 2.0]
    with warnings.catch_warnings():
        # "All-NaN slice encountered": those positions are NaN, which is the intended answer.
        warnings.simplefilter("ignore", RuntimeWarning)
        med, low, high = np.nanquantile(x, q, axis=axis)
    return med, low, high


def growth_exponent(t, d) -> tuple[float, float, float]:
    """Growth law of a distance: least-squares fit of log d = exponent * log t + intercept.

    Only points with t > 0 and d > 0, both finite, enter the fit (a zero distance, e.g. identical
    trajectories, has no logarithm). ``t`` is broadcast against ``d``, so ``d`` of shape [S, E]
    with ``t`` of shape [E] pools all seeds into one fit. Logarithms are natural, so
    d ~ exp(intercept) * t ** exponent.

    Returns:
      (exponent, intercept, r2); all NaN with fewer than 3 usable points or fewer than 2 distinct
      t. r2 is NaN when d is constant over the points (nothing to explain; the exponent is 0).

    >>> t = np.arange(1.0, 20.0)
    >>> k, c, r2 = growth_exponent(t, 3.0 * t**1.5)
    >>> round(k, 12), round(float(np.exp(c)), 12), round(r2, 12)
    (1.5, 3.0, 1.0)
    """
    t, d = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(d, dtype=np.float64))
    ok = np.isfinite(t) & np.isfinite(d) & (t > 0) & (d > 0)
    x, y = np.log(t[ok]), np.log(d[ok])
    if x.size < 3 or np.all(x == x[0]):
        return math.nan, math.nan, math.nan
    xc, yc = x - x.mean(), y - y.mean()
    exponent = float((xc * yc).sum() / (xc * xc).sum())
    intercept = float(y.mean() - exponent * x.mean())
    ss_tot = float((yc * yc).sum())
    ss_res = float(((yc - exponent * xc) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return exponent, intercept, r2


def _paired_differences(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"a and b must be 1-D with one value per seed, got shapes {a.shape} and {b.shape}"
        )
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, which is what the callers check for
        return a - b


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
