"""The weight layout convention: Muon against optax.contrib.muon, and each asymmetric norm's
dualizer against a brute-force maximisation written from the layer's map, in both layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import optimorph
from optimorph.norms import dual_norm, dualize, norm
from optimorph.norms.layout import fans

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("shape", [(8, 32), (32, 8), (16, 16)])
@pytest.mark.parametrize("nesterov", [False, True])
def test_muon_equals_optax_contrib_muon_in_optimorphs_layout(shape, nesterov):
    """Same layout as optax's default (reduction axis 0), optax's eps set to optimorph's 1e-7.

    Step 1 is the same map to rounding. Later steps: optax's momentum is an EMA with bias
    correction, a scale that orthogonalization removes except through eps (relative ~1e-8), so
    without Nesterov the steps agree to 1e-7. optax's Nesterov form b m_hat_{t+1} + (1-b) g_hat_t
    weighs g and m differently from the original Muon's g + b m after step 1 (a documented
    convention, not compared past step 1).
    """
    flag = str(nesterov).lower()
    ours = optimorph.optimizer(f"muon(lr=0.1, beta=0.9, nesterov={flag})")
    ref = optax.contrib.muon(0.1, beta=0.9, eps=1e-7, nesterov=nesterov)
    p = {"w": jnp.zeros(shape)}
    so, sr = ours.init(p), ref.init(p)
    for t in range(1 if nesterov else 4):
        g = {"w": jnp.asarray(RNG.standard_normal(shape))}
        uo, so = ours.update(g, so, p)
        ur, sr = ref.update(g, sr, p)
        scale = float(jnp.abs(ur["w"]).max())
        tol = 1e-12 if t == 0 and not nesterov else 1e-7
        np.testing.assert_allclose(uo["w"], ur["w"], atol=tol * scale, rtol=0)
    # The shape factor sqrt(max(1, d_out / d_in)) with (d_in, d_out) = shape: a wide weight of
    # optimorph's models (more outputs than inputs) gets the larger step.
    d_in, d_out = fans(shape, "in_out")
    assert (d_in, d_out) == shape
    q = optimorph.optimizer("muon(lr=1, beta=0, nesterov=false, orthogonalizer='svd')")
    g = {"w": jnp.asarray(RNG.standard_normal(shape))}
    u, _ = q.update(g, q.init(g), g)
    singular = np.linalg.svd(np.asarray(u["w"]), compute_uv=False)
    np.testing.assert_allclose(singular, max(1.0, d_out / d_in) ** 0.5, rtol=1e-12)


def test_muon_out_in_layout_reads_pytorch_weights_as_their_transpose():
    w = jnp.asarray(RNG.standard_normal((8, 32)))
    a = optimorph.optimizer("muon(lr=1, beta=0, nesterov=false, orthogonalizer='svd')")
    b = optimorph.optimizer(
        "muon(lr=1, beta=0, nesterov=false, orthogonalizer='svd', layout='out_in')"
    )
    ua, _ = a.update({"w": w}, a.init({"w": w}), None)
    ub, _ = b.update({"w": w.T}, b.init({"w": w.T}), None)
    np.testing.assert_allclose(ub["w"], ua["w"].T, rtol=1e-12)


def test_muon_fallback_adam_reproduces_optax_muon_on_biases():
    """Matrices by Muon, vectors by Adam with optax's bias-corrected Nesterov form."""
    ours = optimorph.optimizer("muon(lr=0.05, beta=0.9, nesterov=true, fallback='adam', "
                               "adam_eps=1e-7)")  # fmt: skip
    ref = optax.contrib.muon(0.05, beta=0.9, eps=1e-7, nesterov=True)
    p = {"w": jnp.zeros((6, 10)), "b": jnp.zeros(10)}
    so, sr = ours.init(p), ref.init(p)
    assert so.v["b"].shape == (10,) and so.v["w"].shape == ()  # Adam's v only where used
    for t in range(5):
        g = jax.tree.map(lambda x: jnp.asarray(RNG.standard_normal(x.shape)), p)
        uo, so = ours.update(g, so, p)
        ur, sr = ref.update(g, sr, p)
        np.testing.assert_allclose(uo["b"], ur["b"], rtol=1e-12)
        if t == 0:
            np.testing.assert_allclose(uo["w"], ur["w"], rtol=0, atol=1e-7)
    sign = optimorph.optimizer("muon(lr=0.05, beta=0.9)")  # the default: sign descent
    u, _ = sign.update(g, sign.init(p), p)
    np.testing.assert_allclose(u["b"], -0.05 * np.sign(np.asarray(g["b"])), rtol=0)


# ------------------------------------------------------------- dualizers against brute force


def _operator_of(w: np.ndarray, layout: str) -> np.ndarray:
    """The matrix of the layer's map x -> y, built by applying the map to basis vectors
    (independent of optimorph.norms.layout)."""
    if layout == "in_out":
        apply = lambda x: x @ w  # noqa: E731
        d_in = w.shape[0]
    else:
        apply = lambda x: w @ x  # noqa: E731
        d_in = w.shape[1]
    return np.stack([apply(e) for e in np.eye(d_in)], axis=1)  # columns: images of e_i


# Each operator norm as constraints c(A) >= 0 describing its unit ball (textbook definitions:
# ||A||_{1->2} = max column l2; ||A||_{2->inf} = max row l2; ||A||_{1->RMS} = max column RMS;
# ||A||_{RMS->RMS} = sqrt(d_in / d_out) sigma_max).
BALLS = {
    "l1_to_l2": lambda a: 1 - np.sum(a * a, axis=0),
    "l2_to_linf": lambda a: 1 - np.sum(a * a, axis=1),
    "l1_to_rms": lambda a: 1 - np.mean(a * a, axis=0),
    "rms_to_rms": lambda a: a.shape[0] / a.shape[1] - np.linalg.eigvalsh(a.T @ a),
}


def _projected_ascent_rms(g: np.ndarray, layout: str) -> float:
    """max <G, D> over ||map(D)||_{RMS->RMS} <= 1 by projected gradient ascent: the ball is
    sigma_max(A) <= sqrt(d_out / d_in), and projecting onto it clips A's singular values (SLSQP
    stalls there: at the optimum all singular values are equal, where the constraint has no
    gradient)."""
    d = np.zeros_like(g)
    for _ in range(200):
        a = _operator_of(d + g, layout)
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        a = (u * np.minimum(s, np.sqrt(a.shape[0] / a.shape[1]))) @ vt
        d = a.T if layout == "in_out" else a  # back to the parameter's storage
    return float(np.vdot(g, d))


def _brute_force_max(g: np.ndarray, layout: str, name: str) -> float:
    """max <G, D> over parameters D whose layer map lies in the norm's unit ball (SLSQP,
    several starts)."""
    if name == "rms_to_rms":
        return _projected_ascent_rms(g, layout)
    ball = BALLS[name]
    best = -np.inf
    for start in range(6):
        x0 = np.random.default_rng(start).standard_normal(g.size) * 0.1
        res = scipy.optimize.minimize(
            lambda x: -np.vdot(g.ravel(), x),
            x0,
            jac=lambda x: -g.ravel(),
            constraints=[{"type": "ineq",
                          "fun": lambda x: ball(_operator_of(x.reshape(g.shape), layout))}],
            method="SLSQP",
            options={"maxiter": 500, "ftol": 1e-12},
        )  # fmt: skip
        if np.all(ball(_operator_of(res.x.reshape(g.shape), layout)) >= -1e-7):
            best = max(best, -res.fun)
    return best


@pytest.mark.parametrize("name", sorted(BALLS))
@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_asymmetric_dualizers_attain_the_brute_force_maximum(name, shape, layout):
    g = RNG.standard_normal(shape)
    d = np.asarray(dualize(name, jnp.asarray(g), layout))
    # d lies on the boundary of the unit ball of the layer's map, read independently ...
    assert np.min(BALLS[name](_operator_of(d, layout))) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(float(norm(name, jnp.asarray(d), layout)), 1.0, rtol=1e-12)
    # ... and attains the maximum of <G, D> over that ball, which is the dual norm.
    best = _brute_force_max(g, layout, name)
    np.testing.assert_allclose(np.vdot(g, d), best, rtol=1e-5)
    np.testing.assert_allclose(float(dual_norm(name, jnp.asarray(g), layout)), best, rtol=1e-5)


def test_the_wrong_layout_is_visibly_wrong():
    """The test above can fail: on a non-square matrix the other layout's dualizer is not the
    maximiser for the layer's map."""
    g = RNG.standard_normal((3, 5))
    wrong = np.asarray(dualize("l1_to_l2", jnp.asarray(g), "out_in"))
    assert np.min(BALLS["l1_to_l2"](_operator_of(wrong, "in_out"))) < -1e-3  # outside the ball


def test_steepest_reads_the_layout():
    g = jnp.asarray(RNG.standard_normal((4, 7)))
    a = optimorph.optimizer("steepest(lr=1, norm='l1_to_l2', scale='unit')")
    b = optimorph.optimizer("steepest(lr=1, norm='l1_to_l2', scale='unit', layout='out_in')")
    ua, _ = a.update({"w": g}, a.init({"w": g}), None)
    ub, _ = b.update({"w": g}, b.init({"w": g}), None)
    # in_out: each input's weights (a row of W) normalised; out_in: each column.
    np.testing.assert_allclose(np.linalg.norm(ua["w"], axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ub["w"], axis=0), 1.0, rtol=1e-12)


def test_an_unknown_layout_is_one_clear_error():
    with pytest.raises(optimorph.SpecError, match="layout"):
        optimorph.optimizer("muon(layout='rows')")
    with pytest.raises(optimorph.SpecError, match="in_out"):
        dualize("spectral", jnp.ones((2, 3)), "rows")
