"""One conformance suite that every registered optimizer runs through by being registered."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optimorph.optimizers import REGISTRY, optimizer, resolve

NAMES = sorted(REGISTRY)
LAMBDAS = jnp.logspace(0, 1, 8)  # a diagonal quadratic with condition number 10


def _quadratic(x):
    return 0.5 * jnp.sum(LAMBDAS * x["w"] ** 2)


def _half_square(params):
    return 0.5 * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))


def _extra(name, loss=_half_square):
    """The optax extra arguments an optimizer's registry entry says it needs (Newton: the
    loss, for its Hessian); the engine passes them to every optimizer."""
    return {"value_fn": loss} if "value_fn" in REGISTRY[name].needs else {}


def _run(tx, params, steps, extra=None):
    def body(carry, _):
        params, state = carry
        g = jax.grad(_quadratic)(params)
        updates, state = tx.update(g, state, params, **(extra or {}))
        return (optax.apply_updates(params, updates), state), _quadratic(params)

    (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return params, losses


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_quadratic_under_scan(name):
    """Under lax.scan, some rate of a small grid reduces the loss by 1e3 in 1000 steps."""
    params = {"w": jnp.ones(8)}
    start = float(_quadratic(params))
    finals = {}
    has_lr = any(h.name == "lr" for h in REGISTRY[name].hparams)  # wrappers: their defaults
    for lr in (0.1, 0.03, 0.01, 0.003, 0.001) if has_lr else (None,):
        tx = optimizer(name, lr=lr) if has_lr else optimizer(name)
        out, _ = jax.jit(lambda p, tx=tx: _run(tx, p, 1000, _extra(name, _quadratic)))(params)
        finals[lr] = float(_quadratic(out))
    assert np.nanmin(list(finals.values())) < 1e-3 * start, finals  # a too-large rate may NaN


@pytest.mark.parametrize("name", NAMES)
def test_jit_does_not_recompile(name):
    tx = optimizer(name)
    traces = []

    def step(g, state, params):
        traces.append(1)
        return tx.update(g, state, params, **_extra(name))

    step = jax.jit(step)
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    state = tx.init(params)
    for k in range(3):
        g = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (k + 1)), params)
        _, state = step(g, state, params)
    assert len(traces) == 1


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", NAMES)
def test_state_and_update_dtypes_are_kept(name, dtype):
    tx = optimizer(name)
    params = {"w": jnp.ones((4, 3), dtype), "b": jnp.ones(3, dtype)}
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **_extra(name)))
    for _ in range(3):
        g = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    for leaf in jax.tree.leaves((updates, params)):
        assert leaf.dtype == dtype
    for leaf in jax.tree.leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype, (name, leaf.dtype)


@pytest.mark.parametrize("name", NAMES)
def test_state_is_named(name):
    """The state (or each element of a chain's state) is a NamedTuple with named fields."""
    state = optimizer(name).init({"w": jnp.ones(3)})
    parts = state if type(state) is tuple else (state,)
    assert any(hasattr(p, "_fields") and p._fields for p in parts)


@pytest.mark.parametrize("name", NAMES)
def test_traced_hyperparameters_give_the_same_update(name):
    """Numbers passed as traced arrays (the engine's grid path) change nothing."""
    spec = resolve(name)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    g = {"w": jnp.linspace(0.3, -0.2, 6)}
    tx = spec.build()
    expected, _ = tx.update(g, tx.init(params), params, **_extra(name))

    @jax.jit
    def traced(values):
        tx = spec.build(values)
        return tx.update(g, tx.init(params), params, **_extra(name))[0]

    values = jax.tree.map(jnp.asarray, spec.traced_values())
    np.testing.assert_allclose(traced(values)["w"], expected["w"], rtol=1e-14, atol=0)


def test_matches_optax_peers_in_float64():
    """Same rule, independent implementation: optax's sgd, adam and rmsprop (eps inside)."""
    pairs = [
        ("sgd(lr=0.1)", optax.sgd(0.1)),
        ("momentum(lr=0.1, beta=0.9)", optax.sgd(0.1, momentum=0.9)),
        ("adam(lr=0.01)", optax.adam(0.01)),
        ("rmsprop(lr=0.01, beta=0.9, eps=1e-8, eps_inside=true)", optax.rmsprop(0.01, 0.9, 1e-8)),
        ("nesterov(lr=0.1, beta=0.9)", optax.sgd(0.1, momentum=0.9, nesterov=True)),
    ]
    params = {"w": jnp.ones(8)}
    for spec, peer in pairs:
        ours, _ = _run(optimizer(spec), params, 100)
        ref, _ = _run(peer, params, 100)
        np.testing.assert_allclose(ours["w"], ref["w"], rtol=1e-12, atol=1e-300, err_msg=spec)


def test_momentum_forms_agree_in_float64():
    """With a constant rate the three momentum forms are one algorithm (exact in real math)."""
    params = {"w": jnp.ones(8)}
    outs = [
        _run(optimizer(f"momentum(lr=0.02, beta=0.9, form='{form}')"), params, 300)[0]["w"]
        for form in ("heavy_ball", "pytorch", "ema")
    ]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-11)


def test_adam_without_moments_is_sign_descent():
    """adam(b1=0, b2=0, eps=0, no bias correction) is signsgd: identical updates."""
    params = {"w": jnp.ones(8)}
    a, _ = _run(optimizer("adam(lr=0.01, b1=0, b2=0, eps=0, bias_correction=false)"), params, 50)
    s, _ = _run(optimizer("signsgd(lr=0.01)"), params, 50)
    np.testing.assert_array_equal(a["w"], s["w"])
