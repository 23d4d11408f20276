"""The phase diagram's traced rounding and the verdicts it gives in known cells."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from optimorph.equivalence.phase import phase_diagram, round_to_bits


def _values(n=50_000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 4, n)


def test_round_to_bits_equals_ieee_formats_on_their_normal_range():
    x = _values()
    f = jax.jit(round_to_bits)
    np.testing.assert_array_equal(f(jnp.asarray(x), 23), x.astype(np.float32).astype(np.float64))
    normal16 = np.abs(x) >= 2.0**-14
    ref16 = x.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(x), 10))[normal16], ref16[normal16])
    x32 = x.astype(np.float32).astype(np.float64)  # exact in float32: no double rounding in the ref
    ref_bf16 = x32.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    np.testing.assert_array_equal(f(jnp.asarray(x32), 7), ref_bf16)
    np.testing.assert_array_equal(f(jnp.asarray(x), 52), x)
    specials = jnp.asarray([np.inf, -np.inf, np.nan, 0.0, -0.0])
    np.testing.assert_array_equal(f(specials, 4), specials)


def test_known_cells_of_the_phase_diagram():
    pairs = [
        ("adam(lr=0.01, b1=0, b2=0, eps=0)", "signsgd(lr=0.01)"),
        ("sgd(lr=0.01)", "signsgd(lr=0.01)"),
        ("sgd(lr=0.01)", "sgd(lr=0.01001)"),
    ]
    pd = phase_diagram(
        pairs, mantissa_bits=[4, 10, 52], heterogeneity=[1.0, 100.0], steps=100, evals=5, seeds=2
    )
    assert pd.equivalent[0].all(), "adam without moments is sign descent at every precision"
    assert not pd.equivalent[1, 1:, 1].any(), "sgd vs signsgd differ on a heterogeneous problem"
    assert not pd.equivalent[2, 2].any() and pd.equivalent[2, 0].all(), (
        "a 0.1% learning-rate change is visible at fp64 and below the floor at 4 mantissa bits"
    )
    assert len(pd.table()) == 3 * 3 * 2


def test_the_least_squares_family_and_the_axes_bounds():
    pairs = [("adam(lr=0.01, b1=0, b2=0, eps=0)", "signsgd(lr=0.01)"),
             ("sgd(lr=0.01)", "signsgd(lr=0.01)")]  # fmt: skip
    pd = phase_diagram(pairs, mantissa_bits=[10, 52], heterogeneity=[1.0, 1e3], steps=60,
                       evals=5, seeds=2, family="least-squares")  # fmt: skip
    assert pd.settings["family"] == "least-squares"
    assert pd.equivalent[0].all(), "adam without moments is sign descent on least squares too"
    assert not pd.equivalent[1, :, 1].any(), "sgd vs signsgd differ with spread feature scales"
    # the family changes the problem: the same pair's ratios differ from the quadratic's
    quad = phase_diagram(pairs[1:], mantissa_bits=[52], heterogeneity=[1e3], steps=60, evals=5,
                         seeds=2)  # fmt: skip
    assert quad.ratio[0, 0, 0] != pd.ratio[1, 1, 1]
    for bad in (dict(heterogeneity=[0.5, 10.0]), dict(mantissa_bits=[10, 60]),
                dict(family="rosenbrock")):  # fmt: skip
        with pytest.raises(ValueError):
            phase_diagram(pairs, steps=10, evals=5, **bad)
