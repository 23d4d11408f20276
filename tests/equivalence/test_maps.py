"""State maps: exact maps reproduce the other optimizer, closed-form condition numbers, fits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.equivalence.defect import one_step, visited_states
from optimorph.equivalence.maps import StateMap, find_map, fit_map, identity_map
from optimorph.optimizers.first_order import (
    AdamState,
    HeavyBallState,
    MomentumState,
    RmspropState,
    SgdState,
)
from optimorph.problems import problem

QUAD = problem("quadratic(dim=8, kappa=100)")
U64 = 2.0**-53


def momentum(form, lr=0.05, beta=0.9):
    return f"momentum(lr={lr}, beta={beta}, form='{form}')"


def flat(*trees):
    leaves = [x for x in jax.tree.leaves(trees) if jnp.issubdtype(x.dtype, jnp.floating)]
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


@pytest.mark.parametrize(
    "a, b", [("pytorch", "ema"), ("pytorch", "heavy_ball"), ("heavy_ball", "ema")]
)
def test_exact_map_reproduces_the_other_form_in_float64(a, b):
    # From every visited state s of A: U_B(phi(s), g) == phi(U_A(s, g)) up to float64 rounding.
    smap = find_map(momentum(a), momentum(b))
    assert smap is not None and smap.kind == "exact"
    visited = visited_states(QUAD, momentum(a), "fp64", steps=60, every=6)
    assert len(visited) == 10
    worst = 0.0
    for params, state, grads in visited:
        want = smap.phi(*one_step(momentum(a), "fp64", params, state, grads))
        got = one_step(momentum(b), "fp64", *smap.phi(params, state), grads)
        assert type(got[1]) is type(want[1])
        assert int(got[1].count) == int(want[1].count) == int(state.count) + 1
        worst = max(worst, np.linalg.norm(flat(*got) - flat(*want)) / np.linalg.norm(flat(*want)))
    assert worst < 10 * U64


def test_pytorch_to_ema_state_is_scaled_by_one_minus_beta():
    smap = find_map(momentum("pytorch"), momentum("ema"))
    state = MomentumState(jnp.int32(7), {"w": jnp.array([1.0, -2.0])})
    params, mapped = smap.phi({"w": jnp.zeros(2)}, state)
    np.testing.assert_array_equal(mapped.m["w"], (1 - 0.9) * np.array([1.0, -2.0]))
    assert int(mapped.count) == 7
    back = smap.psi(params, mapped)[1]
    np.testing.assert_allclose(back.m["w"], state.m["w"], rtol=2 * U64)


@pytest.mark.parametrize("beta", [0.9, 0.5, 0.0])
def test_kappa_of_pytorch_to_ema_is_one_over_one_minus_beta(beta):
    smap = find_map(momentum("pytorch", beta=beta), momentum("ema", beta=beta))
    assert smap.scales == {"params": 1.0, "m": 1.0 - beta}
    assert smap.kappa_phi == pytest.approx(1 / (1 - beta), rel=1e-14)
    assert smap.kappa_psi == pytest.approx(smap.kappa_phi, rel=1e-14)


@pytest.mark.parametrize("eta", [0.1, 2.0, 1.0])
def test_kappa_of_heavy_ball_maps_is_max_over_min_of_one_and_eta(eta):
    # pytorch -> heavy_ball has factors {1, -eta}; the inverse {1, -1/eta}: same condition number.
    forward = find_map(momentum("pytorch", lr=eta), momentum("heavy_ball", lr=eta))
    backward = find_map(momentum("heavy_ball", lr=eta), momentum("pytorch", lr=eta))
    assert forward.scales == {"params": 1.0, "velocity": -eta}
    assert backward.scales == {"params": 1.0, "m": -1.0 / eta}
    closed = max(1.0, eta) / min(1.0, eta)
    for smap in (forward, backward):
        assert smap.kappa_phi == pytest.approx(closed, rel=1e-14)
        assert smap.kappa_psi == pytest.approx(closed, rel=1e-14)
    # ema -> heavy_ball: factor -eta / (1 - beta).
    ema = find_map(momentum("ema", lr=eta), momentum("heavy_ball", lr=eta))
    factor = eta / (1 - 0.9)
    assert ema.kappa_phi == pytest.approx(max(1, factor) / min(1, factor), rel=1e-14)


@pytest.mark.parametrize(
    "a, b",
    [
        ("sgd(lr=0.1)", "sgd(lr=0.1)"),
        ("sgd(lr=0.1)", "sgd(lr=0.2)"),
        ("adam(lr=0.01)", "adam(lr=0.01)"),
        ("sgd(lr=0.1)", "momentum(lr=0.1, beta=0, form='ema')"),
        ("adam(b1=0, b2=0, eps=0)", "signsgd(lr=0.001)"),
        ("adam(b1=0, b2=0.9, bias_correction=False)", "rmsprop(lr=0.001, beta=0.9)"),
    ],
)
def test_identity_like_maps_have_condition_number_one(a, b):
    for smap in (find_map(a, b), find_map(b, a)):
        assert smap is not None
        assert smap.kappa_phi == smap.kappa_psi == 1.0


def test_maps_are_symmetric_and_psi_inverts_phi():
    a, b = momentum("ema", lr=0.3), momentum("heavy_ball", lr=0.3)
    forward, backward = find_map(a, b), find_map(b, a)
    assert backward.scales == forward.inverse_scales
    state = MomentumState(jnp.int32(3), {"w": jnp.array([0.5, -4.0, 1e-3])})
    params = {"w": jnp.ones(3)}
    velocity = forward.phi(params, state)[1]
    assert isinstance(velocity, HeavyBallState)
    np.testing.assert_allclose(backward.phi(params, velocity)[1].m["w"], state.m["w"], rtol=1e-15)
    np.testing.assert_allclose(forward.psi(params, velocity)[1].m["w"], state.m["w"], rtol=1e-15)


def test_find_map_checks_the_conditions():
    assert find_map(momentum("pytorch", beta=0.9), momentum("ema", beta=0.8)) is None
    assert find_map(momentum("pytorch", lr=0.1), momentum("ema", lr=0.2)) is None
    # A schedule: pytorch <-> ema still exact, heavy-ball (eta folded into the buffer) is not.
    sched = "power_law(0.1, tau=100)"
    assert find_map(momentum("pytorch", lr=sched), momentum("ema", lr=sched)) is not None
    assert find_map(momentum("pytorch", lr=sched), momentum("heavy_ball", lr=sched)) is None
    assert find_map(momentum("heavy_ball", lr=sched), momentum("ema", lr=sched)) is None
    assert find_map("sgd(lr=0.1)", "momentum(lr=0.1, beta=0.5)") is None
    assert find_map("adam(b1=0.9, bias_correction=False)", "rmsprop(beta=0.999)") is None
    assert find_map("adam(b1=0, bias_correction=True)", "rmsprop(beta=0.999)") is None
    assert find_map("adam(b1=0, bias_correction=False)", "rmsprop(eps_inside=True)") is None
    assert find_map("adam(b1=0, b2=0, eps=1e-8)", "signsgd") is None
    assert find_map("sgd", "signsgd") is None
    # Equal specs: the identity; sgd with any two rates: the identity as a control.
    assert find_map("adam", "adam(lr=0.001)").name.startswith("identity")
    assert find_map("sgd(lr=0.1)", "sgd(lr=0.5)").kind == "exact"


def test_dropped_fields_are_named_and_zeroed():
    to_rms = find_map("adam(b1=0, b2=0.9, bias_correction=False)", "rmsprop(lr=0.001, beta=0.9)")
    assert to_rms.dropped == ("m",) and set(to_rms.scales) == {"params", "v"}
    params = {"w": jnp.ones(2)}
    adam_state = AdamState(jnp.int32(4), {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 4.0])})
    rms = to_rms.phi(params, adam_state)[1]
    assert isinstance(rms, RmspropState)
    np.testing.assert_array_equal(rms.v["w"], [3.0, 4.0])
    back = to_rms.psi(params, rms)[1]
    np.testing.assert_array_equal(back.m["w"], [0.0, 0.0])
    to_sign = find_map("adam(b1=0, b2=0, eps=0)", "signsgd(lr=0.001)")
    assert to_sign.dropped == ("m", "v")
    assert isinstance(to_sign.phi(params, adam_state)[1], SgdState)
    to_mom = find_map("sgd(lr=0.1)", "momentum(lr=0.1, beta=0, form='heavy_ball')")
    assert to_mom.dropped == ("velocity",)
    np.testing.assert_array_equal(to_mom.phi(params, SgdState(jnp.int32(0)))[1].velocity["w"], 0)


def visited_pairs(scale_fn, n=5, cls_b=MomentumState):
    key = jax.random.key(0)
    a, b = [], []
    for t in range(n):
        k1, k2, key = jax.random.split(key, 3)
        params = {"w": jax.random.normal(k1, (3, 2)), "b": jnp.full((2,), float(t))}
        m = {"w": jax.random.normal(k2, (3, 2)), "b": jnp.arange(2.0) - t + 0.5}
        a.append((params, MomentumState(jnp.int32(t), m)))
        b.append((params, cls_b(jnp.int32(t), scale_fn(m))))
    return a, b


def test_fit_map_recovers_a_scalar_map():
    a, b = visited_pairs(lambda m: jax.tree.map(lambda x: 3.0 * x, m))
    smap = fit_map(a, b)
    assert smap.kind == "fitted" and smap.dropped == ()
    assert smap.scales["m"] == pytest.approx(3.0, rel=1e-15)
    assert smap.residual < 1e-15
    assert smap.kappa_phi == pytest.approx(3.0) and smap.kappa_psi == pytest.approx(3.0)
    np.testing.assert_allclose(smap.psi(*b[2])[1].m["w"], a[2][1].m["w"], rtol=1e-15)


def test_fit_map_matches_fields_by_shape_when_names_differ():
    a, b = visited_pairs(lambda m: jax.tree.map(lambda x: -0.25 * x, m), cls_b=HeavyBallState)
    smap = fit_map(a, b)
    assert smap.pairs == (("params", "params"), ("m", "velocity"))
    assert smap.scales["velocity"] == pytest.approx(-0.25, rel=1e-15)
    assert smap.kappa_phi == pytest.approx(4.0)


def test_fit_map_recovers_a_diagonal_map():
    diag = {"b": jnp.array([0.5, 2.0]), "w": jnp.array([[-4.0, -3.0], [-2.0, -1.0], [0.0, 1.0]])}
    a, b = visited_pairs(lambda m: jax.tree.map(lambda d, x: d * x, diag, m))
    smap = fit_map(a, b, family="diagonal")
    for name in ("w", "b"):
        np.testing.assert_allclose(smap.scales["m"][name], diag[name], rtol=1e-14, atol=0)
    assert smap.residual < 1e-14
    # A zero on the diagonal: phi is singular there (kappa inf) and psi cannot recover it (0).
    assert smap.kappa_phi == smap.kappa_psi == np.inf
    np.testing.assert_array_equal(smap.inverse_scales["m"]["w"][2], [0.0, 1.0])
    scalar = fit_map(a, b, family="scalar")
    assert scalar.residual > 0.1  # a scalar cannot fit a spread of factors


def test_fit_map_diagonal_condition_number():
    diag = {"b": jnp.array([0.5, 2.0]), "w": jnp.linspace(1.0, 4.0, 6).reshape(3, 2)}
    a, b = visited_pairs(lambda m: jax.tree.map(lambda d, x: d * x, diag, m))
    smap = fit_map(a, b, family="diagonal")
    assert smap.kappa_phi == pytest.approx(4.0 / 0.5, rel=1e-12)
    assert smap.kappa_psi == pytest.approx(smap.kappa_phi, rel=1e-12)


def test_fit_map_drops_fields_without_a_counterpart():
    a, b = visited_pairs(lambda m: m)
    sgd_states = [(p, SgdState(s.count)) for p, s in a]
    smap = fit_map(sgd_states, b)
    assert smap.dropped == ("m",)
    mapped = smap.phi(*sgd_states[1])[1]
    np.testing.assert_array_equal(mapped.m["w"], 0.0)
    num = sum(np.sum(flat(s.m) ** 2) for _, s in b)
    want = np.sqrt(num / sum(np.sum(flat(*x) ** 2) for x in b))
    assert smap.residual == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="family"):
        fit_map(a, b, family="full")
    with pytest.raises(ValueError, match="same positive number"):
        fit_map(a, b[:2])


def test_state_map_validates_kind():
    with pytest.raises(ValueError, match="kind"):
        StateMap("x", lambda p, s: (p, s), lambda p, s: (p, s), {"params": 1.0}, kind="guess")
    assert identity_map("adam").scales == {"params": 1.0, "m": 1.0, "v": 1.0}
