"""Generated problems: label noise exactly as asked, determinism, exact scale and curvature."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.problems import problem
from optimorph.spec import SpecError

F32_U = 2.0**-24  # unit roundoff of float32


def clean_moon_labels(x):
    """With noise=0 a point's class is its curve: the outer moon is the unit circle about 0."""
    on_outer = np.abs(x[:, 0] ** 2 + x[:, 1] ** 2 - 1) < 1e-5
    on_inner = np.abs((x[:, 0] - 1) ** 2 + (x[:, 1] - 0.5) ** 2 - 1) < 1e-5
    assert np.all(on_outer != on_inner), "every noiseless point lies on exactly one moon"
    return np.where(on_outer, 0, 1)


@pytest.mark.parametrize("n, flip", [(500, 0.1), (333, 0.25), (100, 0.0)])
def test_two_moons_flips_exactly_the_asked_fraction_of_training_labels(n, flip):
    p = problem("two-moons", n=n, flip=flip, noise=0.0, test_n=200)
    x, y = p.train
    assert np.sum(y != clean_moon_labels(x)) == round(flip * n)
    assert p.info["n_flipped"] == round(flip * n)
    x_test, y_test = p.evals["test"]
    assert np.sum(y_test != clean_moon_labels(x_test)) == 0  # clean labels
    x_noisy, y_noisy = p.evals["test_noisy"]
    assert np.sum(y_noisy != clean_moon_labels(x_noisy)) == round(flip * 200)


def test_two_moons_is_deterministic_given_seed_and_fresh_per_set():
    a, b = problem("two-moons(seed=3)"), problem("two-moons(seed=3)")
    c = problem("two-moons(seed=4)")
    for set_a, set_b in zip(
        [a.train, *a.evals.values()], [b.train, *b.evals.values()], strict=True
    ):
        np.testing.assert_array_equal(set_a[0], set_b[0])
        np.testing.assert_array_equal(set_a[1], set_b[1])
    assert not np.array_equal(a.train[0], c.train[0])
    # Evaluation sets are fresh points, not copies of the training points or of each other.
    assert not np.array_equal(a.train[0], a.evals["test"][0])
    assert not np.array_equal(a.evals["test"][0], a.evals["test_noisy"][0])
    # The training set draws from its own stream: more test sets leave it unchanged.
    d = problem("two-moons(seed=3, test_n=50, test_sets=3)")
    np.testing.assert_array_equal(a.train[0], d.train[0])
    assert sorted(d.evals) == [f"test{s}_{i}" for s in ("", "_noisy") for i in range(3)]


def test_two_moons_shapes_dtypes_and_noise():
    p = problem("two-moons(n=64, noise=0.2)")
    x, y = p.train
    assert x.shape == (64, 2) and x.dtype == np.float32 and y.dtype == np.int32
    assert set(np.unique(y)) == {0, 1}
    # noise=0.2 moves points off the curves.
    assert np.abs(x[:, 0] ** 2 + x[:, 1] ** 2 - 1).min() > 0


@pytest.mark.parametrize(
    "spec, text",
    [
        ("two-moons(flip=0.5)", "flip=0.5 is out of range: valid is 0 <= flip < 0.5"),
        ("two-moons(flip=-0.1)", "0 <= flip < 0.5"),
        ("two-moons(n=0)", "n=0 is out of range: valid is n > 0"),
        ("two-moons(widths=[])", "widths=\\[\\] is out of range"),
        ("stretched-moons(sx=0)", "sx > 0"),
        ("quadratic(kappa=0.5)", "kappa=0.5 is out of range: valid is kappa >= 1"),
        ("quadratic(dim=1, kappa=10)", "kappa == 1 when dim == 1"),
        ("least-squares(hetero=0.9)", "hetero >= 1"),
    ],
)
def test_out_of_range_values_name_the_valid_range(spec, text):
    with pytest.raises(SpecError, match=text):
        problem(spec)


def test_stretched_moons_scales_the_axes():
    p = problem("stretched-moons(n=200)")
    plain = problem("two-moons(n=200, noise=0.0, flip=0.0)")
    x = p.train[0] / np.array([0.1, 10.0], np.float32)
    np.testing.assert_array_equal(p.train[1], clean_moon_labels(x))
    assert p.info["n_params"] == plain.info["n_params"] == 4482


def test_quadratic_loss_is_the_closed_form_and_its_spread_is_kappa():
    dim, kappa = 7, 1e3
    p = problem(f"quadratic(dim={dim}, kappa={kappa})")
    params = p.init(jax.random.key(0))
    x = np.asarray(params["x"], np.float64)
    lam = np.geomspace(1.0, kappa, dim)
    expected = 0.5 * np.sum(lam * x**2)
    # float32 curvatures and a float32 sum of dim terms: a few unit roundoffs per term.
    assert abs(float(p.loss(params, p.train)) - expected) <= 4 * dim * F32_U * expected
    hessian = jax.hessian(lambda v: p.loss({"x": v}, p.train))(params["x"])
    np.testing.assert_array_equal(hessian, np.diag(np.diag(hessian)))
    eig = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
    assert abs(eig.max() / eig.min() - kappa) <= 4 * F32_U * kappa
    assert p.full_batch and p.n_train == 1 and p.evals == {}


def test_quadratic_init_key_draws_the_start():
    p = problem("quadratic(dim=1000)")
    x0, x1 = p.init(jax.random.key(0))["x"], p.init(jax.random.key(1))["x"]
    assert x0.dtype == jnp.float32 and not np.array_equal(x0, x1)
    assert abs(float(jnp.std(x0)) - 1) < 0.1  # N(0, I)


@pytest.mark.parametrize("hetero", [1.0, 10.0, 1e4])
def test_least_squares_column_scale_ratio_equals_hetero(hetero):
    p = problem("least-squares", hetero=hetero)
    x = p.train[0].astype(np.float64)
    rms = np.sqrt(np.mean(x**2, axis=0))
    np.testing.assert_allclose(rms, np.geomspace(1.0, hetero, 20), rtol=20 * F32_U)
    assert abs(rms.max() / rms.min() - hetero) <= 40 * F32_U * hetero


def test_least_squares_gradient_is_the_closed_form():
    p = problem("least-squares(n=50, d=6, hetero=100, noise=0.3)")
    params = jax.tree.map(lambda a: a.astype(jnp.float64), p.init(jax.random.key(1)))
    x, y = (a.astype(np.float64) for a in p.train)
    grad = jax.grad(p.loss)(params, (x, y))["dense0"]["w"]
    w = np.asarray(params["dense0"]["w"])
    expected = x.T @ (x @ w - y) / len(y)
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_least_squares_records_the_optimum():
    assert problem("least-squares(n=100, d=5, noise=0.0)").info["optimum"] < 1e-12
    p = problem("least-squares(n=100, d=5, hetero=10, noise=0.5)")
    x, y = (a.astype(np.float64) for a in p.train)
    w_hat = np.linalg.solve(x.T @ x, x.T @ y)  # normal equations, independent of lstsq
    best = float(p.loss({"dense0": {"w": jnp.asarray(w_hat)}}, (x, y)))
    assert abs(p.info["optimum"] - best) <= 1e-12 * best
