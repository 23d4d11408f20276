"""Theory checks: the SignSGD bound and the Newton bound against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.equivalence.defect import visited_states
from optimorph.equivalence.theory import newton_bound, signsgd_bound, theory_checks
from optimorph.problems import problem


def test_signsgd_bound_closed_form():
    g = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[0.5], [-12.0]])}
    norm = math.sqrt(9 + 16 + 0.25 + 144)
    assert signsgd_bound(g) == pytest.approx(norm / 0.5, rel=1e-15)
    assert signsgd_bound(jnp.full(9, -2.0)) == pytest.approx(3.0, rel=1e-15)  # sqrt(n)
    assert signsgd_bound(jnp.array([1.0, 0.0, 2.0])) == math.inf
    assert math.isnan(signsgd_bound(jnp.array([1.0, jnp.nan])))
    with pytest.raises(ValueError, match="no coordinates"):
        signsgd_bound({})


def test_newton_bound_on_the_quadratic_is_its_condition_number():
    quad = problem("quadratic(dim=8, kappa=100)")
    params = quad.init(jax.random.key(0))  # the Hessian is constant: any point
    assert newton_bound(quad, params) == pytest.approx(100.0, rel=1e-12)


def test_newton_bound_on_least_squares_matches_the_data_matrix():
    lsq = problem("least-squares(n=50, d=6, hetero=30)")
    params = lsq.init(jax.random.key(1))
    assert newton_bound(lsq, params) == pytest.approx(lsq.info["hessian_condition"], rel=1e-8)


def test_newton_bound_refuses_large_models():
    moons = problem("two-moons(n=20)")
    with pytest.raises(ValueError, match="4482 parameters"):
        newton_bound(moons, moons.init(jax.random.key(0)))


def test_theory_checks_reports_median_and_max():
    lsq = problem("least-squares(n=50, d=6, hetero=30)")
    visited = visited_states(lsq, "sgd(lr=1e-3)", "fp64", steps=30, every=10)
    grads = [g for _, _, g in visited]
    params = [p for p, _, _ in visited]
    checks = theory_checks(lsq, grads, params, kappa=50.0)
    bounds = [signsgd_bound(g) for g in grads]
    assert checks["signsgd_bound_max"] == max(bounds)
    assert checks["signsgd_bound_median"] == float(np.median(bounds))
    assert checks["newton_bound_max"] == pytest.approx(lsq.info["hessian_condition"], rel=1e-8)
    assert checks["n_grads"] == checks["n_params_checked"] == 3 and checks["note"] == ""
    assert checks["kappa_meets_newton"] is (50.0 >= checks["newton_bound_max"])
    moons = problem("two-moons(n=20)")
    skipped = theory_checks(moons, [], [moons.init(jax.random.key(0))])
    assert skipped["newton_bound_max"] is None and "max_params" in skipped["note"]
    assert skipped["signsgd_bound_max"] is None
