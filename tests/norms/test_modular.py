"""The modular norm: rules on paths, the weighted max, and its steepest step's identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimorph
from optimorph import cli
from optimorph.norms.modular import assign, modular_norm, modular_step


def _params(key=0):
    k = jax.random.split(jax.random.key(key), 4)
    return {
        "embed": {"w": jax.random.normal(k[0], (11, 4))},
        "dense0": {"w": jax.random.normal(k[1], (8, 6)), "b": jax.random.normal(k[2], (6,))},
        "dense1": {"w": jax.random.normal(k[3], (6, 11))},
    }


def test_rules_assign_a_norm_per_layer_and_masses_by_path():
    rows = {a.path: (a.norm, a.mass) for a in assign(_params(), masses={"embed": 3.0})}
    assert rows == {
        "['dense0']['b']": ("linf", 1.0),
        "['dense0']['w']": ("rms_to_rms", 1.0),
        "['dense1']['w']": ("rms_to_rms", 1.0),
        "['embed']['w']": ("l1_to_rms", 3.0),
    }
    with pytest.raises(ValueError, match="matrix norm"):
        assign({"b": jnp.ones(3)}, rules=(("other", "spectral"),))


def test_the_steepest_step_attains_the_dual_and_has_modular_norm_eta():
    """For d = modular_step(G): ||d||_M = eta and <G, d> = -eta sum_l ||G_l||_* / s_l: the
    minimizer of <G, d> + ||d||_M^2 / (2 lr) (float64, exact to rounding)."""
    grads = _params(1)
    rows = assign(grads, masses={"embed": 2.0})
    lr = 0.3
    d = modular_step(grads, rows, lr)
    from optimorph.norms.dualizers import NORMS

    total = sum(NORMS[a.norm].dual(g.T if g.ndim == 2 else g) / a.mass
                for g, a in zip(jax.tree.leaves(grads), rows, strict=True))  # fmt: skip
    eta = lr * total
    inner = sum(jnp.vdot(g, x) for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves(d),
                                                strict=True))  # fmt: skip
    np.testing.assert_allclose(modular_norm(d, rows), eta, rtol=1e-12)
    np.testing.assert_allclose(inner, -eta * total, rtol=1e-12)
    # No other direction of the same modular norm does better (random sample).
    for k in range(20):
        other = jax.tree.map(lambda x, k=k: jax.random.normal(jax.random.key(100 + k), x.shape),
                             grads)  # fmt: skip
        other = jax.tree.map(lambda x: x * eta / modular_norm(other, rows), other)
        value = sum(jnp.vdot(g, x) for g, x in zip(jax.tree.leaves(grads),
                                                   jax.tree.leaves(other), strict=True))  # fmt: skip
        assert value >= inner - 1e-9


def test_modular_optimizer_trains_the_embedding_model_and_the_cli_prints_the_table(capsys):
    prob = optimorph.problem("modular-addition(p=11, train_fraction=0.6)")
    x, y = prob.train
    assert x.shape[1] == 2 and np.all(y == (x[:, 0] + x[:, 1]) % 11)
    r = optimorph.train(prob, "modular(lr=0.1, beta=0.9, scale='unit')", steps=300,
                        batch_size=32, progress=False)  # fmt: skip
    assert r.evals["train/accuracy"][0, 0, -1] > 0.9
    assert cli.main(["norms", "modular-addition(p=11)"]) == 0
    out = capsys.readouterr().out
    assert "['embed']['w']" in out and "l1_to_rms" in out and "rms_to_rms" in out
    assert cli.main(["norms", "modular-addition(p=11)", "--optimizer", "adam"]) == 2
