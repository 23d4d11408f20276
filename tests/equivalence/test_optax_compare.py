"""Any optax transformation compares: nested and chained states get named slots."""

import jax.numpy as jnp
import optax
import pytest

import optimorph
from optimorph.equivalence.maps import Slots, fit_map


def _my_momentum(lr=1e-3, beta=0.9):
    """A user-written transformation whose state is a plain dict (no NamedTuple at all)."""

    def init(params):
        return {"trace": optax.tree_utils.tree_zeros_like(params)}

    def update(g, state, params=None):
        trace = optax.tree_utils.tree_add_scale(g, beta, state["trace"])
        return optax.tree_utils.tree_scale(-lr, trace), {"trace": trace}

    return optax.GradientTransformation(init, update)


@pytest.mark.parametrize(
    "name, tx",
    [
        ("optax-adam", optax.adam(1e-3)),
        ("optax-sgd", optax.sgd(1e-3)),
        (
            "optax-chain",
            optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale(-1e-3)),
        ),  # fmt: skip
        ("optax-lion", optax.lion(1e-4)),
        ("mine", _my_momentum()),
    ],
)
def test_any_optax_transformation_gets_a_verdict_under_its_own_name(name, tx):
    c = optimorph.compare((name, tx), "adam(lr=1e-3)", problem="least-squares(n=64, d=6)",
                          precision=["fp32"], seeds=2, steps=40, progress=False)  # fmt: skip
    verdict = c.pairs["fp32"][0]
    assert verdict.a == name
    assert isinstance(verdict.equivalent, bool)


def test_optax_adam_is_optimorphs_adam_at_fp32():
    c = optimorph.compare(("optax-adam", optax.adam(1e-3)), "adam(lr=1e-3)",
                          problem="least-squares(n=64, d=6)", precision=["fp32"], seeds=2,
                          steps=60, progress=False)  # fmt: skip
    assert c.pairs["fp32"][0].equivalent


def test_slots_of_nested_states_and_a_fitted_map_between_them():
    params = {"w": jnp.ones(3)}
    view = Slots(optax.chain(optax.scale_by_adam(), optax.scale_by_adam()).init(params))
    assert view.names == ["0.count", "0.mu", "0.nu", "1.count", "1.mu", "1.nu"]
    a = optax.adam(0.1)
    sa = a.init(params)
    states = []
    for t in range(3):
        g = {"w": jnp.arange(3.0) + t}
        _, sa = a.update(g, sa, params)
        states.append((params, sa))
    doubled = [(p, jax_tree_scale(s, 2.0)) for p, s in states]
    fitted = fit_map(states, doubled)
    assert fitted.scales["mu"] == pytest.approx(2.0) and fitted.residual == pytest.approx(0.0)


def jax_tree_scale(state, factor):
    import jax

    return jax.tree.map(lambda x: x * factor if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
