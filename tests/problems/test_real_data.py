"""Real data sets: scikit-learn's bundled sets learn, MNIST-1D is generated offline."""

import random
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.problems import problem


def test_logistic_breast_cancer_gradient_descent_reaches_90_percent():
    p = problem("logistic(dataset=breast_cancer)")
    train = tuple(jnp.asarray(a) for a in p.train)

    @jax.jit
    def descend(params):
        def step(params, _):
            grads = jax.grad(p.loss)(params, train)
            return jax.tree.map(lambda w, g: w - 0.5 * g, params, grads), None

        return jax.lax.scan(step, params, length=300)[0]

    params = p.init(jax.random.key(0))
    before = p.evaluate(params, p.evals["test"])
    after = p.evaluate(descend(params), p.evals["test"])
    assert float(after["loss"]) < float(before["loss"])
    assert float(after["accuracy"]) > 0.9


@pytest.mark.parametrize(
    "name, n, d, k",
    [
        ("breast_cancer", 569, 30, 2),
        ("digits", 1797, 64, 10),
        ("wine", 178, 13, 3),
        ("iris", 150, 4, 3),
    ],
)
def test_logistic_split_is_stratified_and_standardised_on_train(name, n, d, k):
    p = problem("logistic", dataset=name)
    (x, y), y_test = p.train, p.evals["test"][1]
    assert len(y) + len(y_test) == n and x.shape[1] == d == p.info["input_shape"][0]
    assert len(y_test) == pytest.approx(0.2 * n, abs=1)
    # Stratified: each class's share differs between the splits by at most one example's worth.
    share, share_test = (
        np.bincount(y, minlength=k) / len(y),
        np.bincount(y_test, minlength=k) / len(y_test),
    )
    assert np.abs(share - share_test).max() <= 1.5 / len(y_test)
    varying = x.std(axis=0) > 0  # digits has constant pixels
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1, rtol=1e-5)
    assert p.info["n_params"] == (d + 1) * k


def test_digits_layouts():
    assert problem("digits").train[0].shape == (1437, 64)
    assert problem("digits(model=linear)").info["n_params"] == 650
    x = problem("digits(model=cnn)").train[0]
    assert x.shape == (1437, 8, 8, 1) and x.min() == 0.0 and x.max() == 1.0


def test_mnist1d_is_generated_without_network_and_keeps_global_rng(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    p = problem("mnist1d(n=400, test_n=100)")
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
    (x, y), (x_test, y_test) = p.train, p.evals["test"]
    assert x.shape == (400, 40) and x_test.shape == (100, 40) and x.dtype == np.float32
    assert y.dtype == np.int32 and set(np.unique(np.concatenate([y, y_test]))) == set(range(10))
    again = problem("mnist1d(n=400, test_n=100)")
    np.testing.assert_array_equal(again.train[0], x)
    assert not np.array_equal(problem("mnist1d(n=400, test_n=100, seed=1)").train[0], x)
    assert problem("mnist1d(n=40, test_n=10, model=cnn)").train[0].shape == (40, 40, 1, 1)


def test_mnist1d_seed_42_is_the_packages_standard_dataset():
    from mnist1d.data import get_dataset_args, make_dataset

    reference = make_dataset(get_dataset_args())
    p = problem("mnist1d(seed=42)")
    np.testing.assert_array_equal(p.train[0], reference["x"].astype(np.float32))
    np.testing.assert_array_equal(p.train[1], reference["y"])
    np.testing.assert_array_equal(p.evals["test"][1], reference["y_test"])
