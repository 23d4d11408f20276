"""The compiled loop's speed-ups keep every bit of a run.

A digest pinned in the test would move with the CPU XLA compiles for (vector widths change the
order of sums), so each speed-up is checked against the code it replaced, in the same process.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimorph
from optimorph.engine import step, train


def _final_params(**kw):
    # A fresh problem object each call: compiled programs are cached per problem.
    prob = optimorph.problem("two-moons(n=100)")
    r = train(prob, "sgd(lr=[0.1, 0.05])", seeds=2, steps=30, batch_size=32, precision="fp32",
              eval_every=10, progress=False, **kw)  # fmt: skip
    return jax.tree.map(np.asarray, r.final_params)


def test_the_fast_batch_order_trains_the_bits_of_jax_permutation(monkeypatch):
    # 2 grid points x 2 seeds = 4 lanes of one program; batch 32 of 100: a fresh permutation
    # every 3 steps, so the batch order is exercised as well as the step.
    fast = _final_params()
    monkeypatch.setattr(step, "permutation", jax.random.permutation)
    plain = _final_params()
    for x, y in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("n", [500, 1626])  # 1626: the first size jax shuffles in two rounds
def test_the_batch_order_is_jax_permutation_bit_for_bit(n):
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 3))(jnp.arange(8))
    ours = jax.jit(jax.vmap(lambda k: step.permutation(k, n)))(keys)
    theirs = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, n)))(keys)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_the_packed_sort_breaks_ties_by_position_like_a_stable_sort():
    # 32-bit keys rarely collide (n = 500: once in ~35,000 epochs); force collisions.
    keys = jnp.asarray(np.random.default_rng(0).integers(0, 4, 300), jnp.uint32)
    expected = jax.lax.sort_key_val(keys, jnp.arange(300), is_stable=True)[1]
    np.testing.assert_array_equal(step.stable_order(keys), expected)


@pytest.mark.parametrize("spec", ["sgd(lr=[0.1, 0.05])", "adam(lr=0.01)"])
def test_fp32_steps_without_float64_train_the_bits_of_the_float64_sum(monkeypatch, spec):
    # fp32 params under x64 used to form p + u in float64 and round it with gradual underflow;
    # add_float32 gives those bits in float32. A whole run, both ways, in one process.
    from optimorph.precision import Precision

    taken = []
    shortcut = Precision._sums_in_float32
    monkeypatch.setattr(Precision, "_sums_in_float32",
                        lambda *a: taken.append(shortcut(*a)) or taken[-1])  # fmt: skip

    def final(**kw):
        prob = optimorph.problem("two-moons(n=100)")
        r = train(prob, spec, seeds=2, steps=30, batch_size=32, precision="fp32",
                  eval_every=10, progress=False, **kw)  # fmt: skip
        return jax.tree.map(np.asarray, r.final_params)

    fast = final()
    assert taken and all(taken)
    monkeypatch.setattr(Precision, "_sums_in_float32", lambda *a: False)
    wide = final()
    for x, y in zip(jax.tree.leaves(fast), jax.tree.leaves(wide), strict=True):
        np.testing.assert_array_equal(x.view(np.uint32), y.view(np.uint32))
