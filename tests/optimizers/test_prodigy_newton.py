"""Prodigy against optax's implementation and a direct loop; Newton against NumPy's solve."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimorph
from optimorph.equivalence.maps import find_map

A = jnp.linspace(1.0, 10.0, 6)
P0 = {"w": jnp.linspace(-1.0, 2.0, 6), "b": jnp.ones(3)}


def _loss(p):
    return 0.5 * jnp.sum(A * (p["w"] - 1.0) ** 2) + 0.1 * jnp.sum(p["b"] ** 4)


def _trajectory(tx, steps=60, **extra):
    p, s, out = P0, tx.init(P0), []
    for _ in range(steps):
        g = jax.grad(_loss)(p)
        u, s = tx.update(g, s, p, **extra)
        p = optax.apply_updates(p, u)
        out.append(np.concatenate([np.asarray(p["w"]), np.asarray(p["b"])]))
    return np.array(out)


def test_prodigy_matches_optax_contrib_prodigy_in_float64():
    ours = _trajectory(optimorph.optimizer("prodigy(lr=1.0, weight_decay=0.01)"))
    peer = _trajectory(optax.contrib.prodigy(learning_rate=1.0, weight_decay=0.01))
    assert np.abs(ours[-1] - ours[0]).max() > 0.1  # it moved
    np.testing.assert_allclose(ours, peer, rtol=1e-10, atol=1e-12)


def test_prodigy_without_ema_is_sign_descent_with_a_growing_rate():
    """w -= lr d_t sign(g); d_{t+1} = max(d_t, g^T (w0 - w_t) / ||g||_1), a float64 loop."""
    lr, d0 = 0.5, 1e-3
    ours = _trajectory(optimorph.optimizer(f"prodigy(lr={lr}, ema=false, d0={d0})"))
    w0 = np.concatenate([np.asarray(P0["w"]), np.asarray(P0["b"])])
    w, d, loop = w0.copy(), d0, []
    for _ in range(len(ours)):
        p = {"w": jnp.asarray(w[:6]), "b": jnp.asarray(w[6:])}
        g = _flat_grad(p)
        d_next = max(d, float(g @ (w0 - w)) / np.abs(g).sum())
        w = w - lr * d * np.sign(g)
        d = d_next
        loop.append(w.copy())
    np.testing.assert_allclose(ours, np.array(loop), rtol=0, atol=1e-14)
    assert d > 10 * d0  # the estimate grew from its underestimate


def _flat_grad(p):
    g = jax.grad(_loss)(p)
    return np.concatenate([np.asarray(g["w"]), np.asarray(g["b"])])


def test_newton_solves_a_quadratic_in_one_step_and_matches_numpy_on_logistic_regression():
    tx = optimorph.optimizer("newton(lr=1.0, damping=0)")
    quad = _trajectory(tx, steps=1, value_fn=lambda p: 0.5 * jnp.sum(A * (p["w"] - 1.0) ** 2))
    np.testing.assert_allclose(quad[0][:6], 1.0, rtol=0, atol=1e-12)
    # Damped Newton on a real logistic regression, against NumPy's Hessian solve.
    prob = optimorph.problem("logistic(dataset=iris)")
    x, y = (np.asarray(a) for a in prob.train)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), prob.init(jax.random.key(0)))
    batch = (jnp.asarray(x, jnp.float64), jnp.asarray(y))
    value_fn = lambda p: prob.loss(p, batch)  # noqa: E731
    tx = optimorph.optimizer("newton(lr=1.0, damping=0.1)")
    g = jax.grad(value_fn)(params)
    u, _ = tx.update(g, tx.init(params), params, value_fn=value_fn)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    h = np.asarray(jax.hessian(lambda f: value_fn(unravel(f)))(flat))
    expected = -np.linalg.solve(h + 0.1 * np.eye(h.shape[0]), np.asarray(ravel(g)))
    np.testing.assert_allclose(np.asarray(ravel(u)), expected, rtol=1e-10, atol=1e-13)
    after = optimorph.train(prob, "newton(lr=1.0, damping=0.1)", steps=10, precision="fp64",
                            progress=False)  # fmt: skip
    assert after.train_loss[0, 0, -1] < 0.2 * after.train_loss[0, 0, 0]


def ravel(tree):
    return jax.flatten_util.ravel_pytree(tree)[0]


def test_newton_refuses_large_models_and_a_missing_loss():
    with pytest.raises(ValueError, match="the model has 8 parameters"):
        optimorph.optimizer("newton(max_params=4)").init({"w": jnp.ones(8)})
    tx = optimorph.optimizer("newton")
    with pytest.raises(ValueError, match="value_fn"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), {"w": jnp.ones(2)})


def test_shampoo_without_accumulation_is_spectral_steepest_descent_exactly():
    a = optimorph.resolve("shampoo(lr=0.1, accumulate=false, eps=0)")
    b = optimorph.resolve("steepest(lr=0.1, norm='spectral', scale='unit')")
    smap = find_map(a, b)
    assert smap is not None and smap.kind == "exact" and "U V^T" in smap.derivation
    assert find_map(b, a) is not None  # inverted
    assert find_map(optimorph.resolve("shampoo(lr=0.1)"), b) is None  # accumulating: no map
    key = jax.random.key(3)
    params = {"w": jax.random.normal(key, (5, 3)), "b": jnp.linspace(-1, 1, 3)}
    grads = jax.tree.map(lambda x: jnp.cos(3 * x) + 0.1, params)
    ua, sa = a.build().update(grads, a.build().init(params), params)
    _, sb = smap.phi(params, sa)
    ub, _ = b.build().update(grads, sb, params)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_compare_calls_shampoo_and_spectral_descent_equivalent_with_the_exact_map():
    c = optimorph.compare("shampoo(lr=0.05, accumulate=false, eps=0)",
                          "steepest(lr=0.05, norm='spectral', scale='unit')",
                          problem="least-squares(n=64, d=6, outputs=3)", precision=["fp32", "fp64"],
                          seeds=2, steps=40, progress=False)  # fmt: skip
    for p in ("fp32", "fp64"):
        (v,) = c.pairs[p]
        assert v.equivalent and v.outcome == "equivalent", v.reason
        assert v.map.startswith("shampoo(accumulate=false, eps=0) -> steepest"), v.map
