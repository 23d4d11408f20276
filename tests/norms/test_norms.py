"""Norms, dualizers, orthogonalizers and norm identification, checked in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimorph
from optimorph.norms import NORMS, dual_norm, dualize, norm, orthogonalize, quality
from optimorph.equivalence.which_norm import which_norm

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("name", NORMS.names())
def test_dualizer_attains_the_dual_norm_and_no_unit_direction_beats_it(name):
    entry = NORMS.lookup(name)
    for shape in [(5, 3), (4, 4), (3, 6)] if entry.matrix else [(7,), (5, 3)]:
        g = jnp.asarray(RNG.standard_normal(shape))
        d = dualize(name, g)
        np.testing.assert_allclose(float(jnp.vdot(g, d)), float(dual_norm(name, g)), rtol=1e-12)
        np.testing.assert_allclose(float(norm(name, d)), 1.0, rtol=1e-12)
        # Random directions scaled to unit norm never do better than the dualizer.
        for _ in range(200):
            r = jnp.asarray(RNG.standard_normal(shape))
            r = r / norm(name, r)
            assert float(jnp.vdot(g, r)) <= float(dual_norm(name, g)) * (1 + 1e-12)


def test_matrix_norms_refuse_vectors():
    with pytest.raises(ValueError, match="is a matrix norm"):
        dualize("spectral", jnp.ones(3))
    with pytest.raises(optimorph.SpecError, match="unknown norm 'l3'"):
        dualize("l3", jnp.ones(3))


@pytest.mark.parametrize("fn, bound", [("svd", 1e-10), ("cubic", 1e-6), ("polar-express", 0.3),
                                       ("quintic", 0.5)])  # fmt: skip
def test_orthogonalizers_against_the_svd(fn, bound):
    g = jnp.asarray(RNG.standard_normal((40, 24)))
    u, _, vt = np.linalg.svd(np.asarray(g), full_matrices=False)
    q = np.asarray(orthogonalize(fn, g))
    assert np.linalg.norm(q - u @ vt) / np.linalg.norm(u @ vt) < bound
    q_user = orthogonalize(lambda x: x / jnp.linalg.norm(x), g)  # any function is accepted
    assert q_user.shape == g.shape
    report = quality(fn, (32, 16), "bf16", repeats=1)
    assert report["sigma_min"] <= 1.0 + 0.02 and report["sigma_max"] >= 1.0 - 0.02
    assert report["seconds"] > 0


@pytest.mark.parametrize(
    "spec, best, exact",
    [
        ("adam(lr=0.1, b1=0, b2=0, eps=0)", "linf", True),
        ("signsgd(lr=0.1)", "linf", True),
        ("sgd(lr=0.1)", "l2", True),
        ("shampoo(lr=1, accumulate=false, eps=0)", "spectral", True),
        ("muon(lr=1, beta=0, nesterov=false, orthogonalizer='svd')", "spectral", True),
        ("muon(lr=1, beta=0, nesterov=false)", "spectral", False),  # quintic: approximate
        ("steepest(norm='l1_to_l2')", "l1_to_l2", True),
        ("steepest(norm='l2_to_linf')", "l2_to_linf", True),
        ("steepest(norm='l1')", "l1", True),
    ],
)
def test_which_norm_names_the_norm_of_the_first_step(spec, best, exact):
    found = which_norm(spec)
    assert (found.best, found.exact) == (best, exact), found.matches[:3]
    if best == "spectral" and not exact:
        assert found.matches[0].cosine > 0.95  # up to the orthogonalizer's error


def test_shampoo_without_accumulation_is_unit_steepest_spectral_descent():
    g = {"w": jnp.asarray(RNG.standard_normal((6, 4))), "b": jnp.asarray(RNG.standard_normal(4))}
    sh = optimorph.optimizer("shampoo(lr=0.1, accumulate=false, eps=0)")
    st = optimorph.optimizer("steepest(lr=0.1, norm='spectral', scale='unit')")
    a, _ = sh.update(g, sh.init(g), g)
    b, _ = st.update(g, st.init(g), g)
    np.testing.assert_allclose(a["w"], b["w"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a["b"], b["b"], rtol=1e-10)  # vectors: sign descent both
    dual = optimorph.optimizer("steepest(lr=0.1, norm='spectral')")  # the dual-norm step factor
    c, _ = dual.update(g, dual.init(g), g)
    np.testing.assert_allclose(c["w"], a["w"] * float(dual_norm("spectral", g["w"])), rtol=1e-10)


def test_shampoo_with_accumulation_matches_a_dense_float64_loop():
    tx = optimorph.optimizer("shampoo(lr=0.05, accumulate=true, eps=1e-6)")
    p = {"w": jnp.zeros((3, 2))}
    state = tx.init(p)
    left, right = np.zeros((3, 3)), np.zeros((2, 2))

    def root(a):
        w, v = np.linalg.eigh(a + 1e-6 * np.eye(len(a)))
        return (v * w**-0.25) @ v.T

    for _ in range(4):
        g = RNG.standard_normal((3, 2))
        u, state = tx.update({"w": jnp.asarray(g)}, state, p)
        left, right = left + g @ g.T, right + g.T @ g
        np.testing.assert_allclose(u["w"], -0.05 * root(left) @ g @ root(right), rtol=1e-8)
    assert jax.tree.leaves(state)[0].dtype == jnp.int32


def test_which_norm_on_the_command_line(capsys):
    import json

    from optimorph import cli

    assert cli.main(["which-norm", "adam(b1=0, b2=0, eps=0)", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["best"] == "linf" and doc["exact"] and "l1_to_linf" in doc["same_direction"]
    assert cli.main(["which-norm", "sgd", "--problem", "two-moons(n=40)"]) == 0
    assert "steepest descent under l2, exactly (worst-case cosine 1.0000" in capsys.readouterr().out
    assert cli.main(["which-norm", "sgd", "--samples", "0"]) == 2


def _transform(direction):
    """An optax transformation whose update is -direction(g), leafwise (no state)."""
    import optax

    return optax.GradientTransformation(
        lambda p: optax.EmptyState(), lambda g, s, p=None: (jax.tree.map(direction, g), s)
    )


def test_which_norm_says_none_of_them_and_prints_the_best_cosine():
    """The rule (worst-case cosine >= 0.95 and a 0.02 margin over any other direction) was
    fixed before these optimizers were measured."""
    from optimorph.equivalence.which_norm import MIN_COSINE

    scales = np.exp(2 * np.random.default_rng(3).standard_normal((9, 9)))
    diag = _transform(lambda g: -g * jnp.asarray(scales[: g.shape[0], : g.shape[1]]))
    found = which_norm(diag)
    assert found.best is None and found.best_cosine < MIN_COSINE
    assert "none of the named norms" in found.verdict and f"{found.best_cosine:.4f}" in found.verdict

    import optax

    noisy = which_norm(optax.noisy_sgd(0.1, eta=100.0, key=jax.random.key(0)))
    assert noisy.best is None and noisy.best_cosine < 0.5

    # Halfway between the gradient and its sign: close to both l2 and linf, the same as neither.
    half = _transform(lambda g: -(g / jnp.linalg.norm(g) + jnp.sign(g) / jnp.sqrt(g.size)))
    found = which_norm(half)
    assert found.best is None
    assert "l2" not in found.same_direction and "linf" not in found.same_direction
    cosines = {m.norm: m.cosine for m in found.matches}
    assert abs(cosines["l2"] - cosines["linf"]) < 0.02  # equally close ...
    # ... yet l2 and linf are not ties: ties mean equal dualizer directions.
    sign = which_norm("signsgd(lr=0.1)")
    assert sign.same_direction == ["l1_to_linf"] and sign.best == "linf"


def test_which_norm_reads_the_layout():
    """steepest(norm='l1_to_l2') in optimorph's layout is l1_to_l2 read as in_out; read as a
    PyTorch (out_in) weight the same step normalises the other axis: l2_to_linf."""
    assert which_norm("steepest(norm='l1_to_l2')").best == "l1_to_l2"
    assert which_norm("steepest(norm='l1_to_l2')", layout="out_in").best == "l2_to_linf"


def test_which_norm_reads_an_opposite_direction_as_opposite_not_missing():
    """Gradient ascent (u = +g) is exactly opposite the l2 dualizer: cosine -1, defect 2."""
    ascent = _transform(lambda g: g)
    found = which_norm(ascent)
    l2 = next(m for m in found.matches if m.norm == "l2")
    assert found.best is None
    np.testing.assert_allclose([l2.cosine, l2.defect], [-1.0, 2.0], rtol=1e-12)
