"""MX formats with their own rounding and with (random) Hadamard transforms, alone and in a
policy: the transform is exact where the sums are, random signs come from the key, stochastic
rounding after a random transform is unbiased, and only the role that asks for keys gets them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph.engine.step import apply_update, gradient, run_keys
from optimorph.precision import parse_format, precision
from optimorph.precision.block import _hadamard


def test_hadamard_matrix():
    h = _hadamard(32)
    assert set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h, h.T)
    np.testing.assert_array_equal(h @ h, 32 * np.eye(32))


def test_hadamard_transform_quantizes_the_rotated_block():
    """Inputs on a coarse grid keep every sum exact, so the result equals the rule computed
    in NumPy: decode(MX(x H)) H / 32, block by block (the last block zero-padded)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 9, (3, 70)).astype(np.float64) * 2.0**-5
    x[0, :32] = 0.0  # an all-zero block stays zero
    fmt = parse_format("mxfp4(transform=hadamard)")
    h = _hadamard(32)
    padded = np.concatenate([x, np.zeros((3, 26))], axis=1).reshape(3, 3, 32)
    rotated = padded @ h
    both = jax.jit(lambda x, r: (fmt.round(x), parse_format("mxfp4").round(r)))
    got, q = (np.asarray(y, np.float64) for y in both(jnp.asarray(x), jnp.asarray(rotated)))
    want = ((q @ h) / 32).reshape(3, 96)[:, :70]
    np.testing.assert_array_equal(got, want.astype(np.float32).astype(np.float64))
    assert (got[0, :32] == 0).all()


def test_rht_signs_come_from_the_key_and_sr_after_it_is_unbiased():
    fmt = parse_format("mxfp4(rounding=stochastic,scale=ceil,transform=rht)")
    x = jnp.asarray(np.random.default_rng(1).standard_normal(64), jnp.float32)
    one = jax.jit(lambda k: fmt.round(x, key=k))
    np.testing.assert_array_equal(one(jax.random.key(3)), one(jax.random.key(3)))
    assert not np.array_equal(one(jax.random.key(3)), one(jax.random.key(4)))
    draws = np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(0), 2000)), np.float64)
    z = np.abs(draws.mean(0) - np.asarray(x)) / (draws.std(0) / np.sqrt(len(draws)))
    assert z.max() < 5  # scale=ceil: nothing saturates, so the rounding alone is random
    with pytest.raises(ValueError, match="transform=rht and rounding=stochastic needs a PRNG"):
        fmt.round(x)


def test_a_format_may_fix_its_rounding():
    x = jnp.asarray(np.random.default_rng(2).uniform(-3, 3, 64), jnp.float32)
    nearest, plain = parse_format("mxfp4(rounding=nearest)"), parse_format("mxfp4")
    sr = parse_format("mxfp4(rounding=stochastic)")
    rounded = jax.jit(lambda x, key: [nearest.round(x, key=key), plain.round(x),
                                      sr.round(x, key=key), plain.round(x, key=key)])  # fmt: skip
    a, b, c, d = rounded(x, jax.random.key(5))
    np.testing.assert_array_equal(a, b)  # rounding=nearest ignores the key
    np.testing.assert_array_equal(c, d)  # rounding=stochastic: the same draws as a keyed call
    assert sr.name == "mxfp4(rounding=stochastic)" and sr.under("nearest") == sr
    assert plain.under("stochastic").rounding == "stochastic"
    rht = parse_format("mxfp4(transform=rht,rounding=nearest)")
    assert rht.keyed("nearest") and not nearest.keyed("nearest") and sr.keyed("nearest")
    assert rht.storage_bits((10, 70)) == 10 * 96 * 4 + 10 * 3 * 8  # padding is stored


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fp32,grads=mxfp4(block=24,transform=rht)", "needs a block that is a power of two"),
        ("fp32,grads=mxfp4(transform=fft)", "transform must be one of none, hadamard, rht"),
        ("fp32,grads=mxfp4(rounding=up)", "rounding must be one of nearest, stochastic"),
        ("mxfp4(rounding=stochastic),state=fp32", "params format takes no rounding=stochastic"),
    ],
)
def test_bad_transform_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        precision(spec)


def test_a_policy_hands_keys_only_to_the_role_that_draws_them():
    """grads in MXFP4 with stochastic rounding inside a round-to-nearest policy: the gradient
    is rounded stochastically from the run's rounding key, params and state as without it."""
    import optimorph

    spec = "bf16,grads=mxfp4(rounding=stochastic,transform=rht),state=fp32"
    policy = precision(spec)
    assert policy.keyed and policy.rounding == "nearest" and policy.name == spec
    assert not precision("bf16,grads=mxfp4(rounding=nearest)").keyed
    prob = optimorph.problem("least-squares(n=64, d=40)")
    tx = optimorph.optimizer("adam(lr=0.01)")
    keys = run_keys(jax.random.key(0))
    params = policy.cast_params(prob.init(keys.init))
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        policy.round_grads(params)

    @jax.jit
    def step(params, state, t):
        _, g, pc = gradient(prob.loss, policy, params, prob.train, rounding_key=keys.rounding, t=t)
        new = apply_update(tx, policy, params, state, None, g, params_c=pc,
                           rounding_key=keys.rounding, t=t)  # fmt: skip
        ref = apply_update(tx, precision("bf16,state=fp32"), params, state, None, g)
        return new, g, ref

    (a, ga, ref), (_, gb, _) = step(params, state, 0), step(params, state, 0)
    np.testing.assert_array_equal(ga["dense0"]["w"], gb["dense0"]["w"])  # the key decides
    _, gc, _ = step(params, state, 1)
    assert not np.array_equal(ga["dense0"]["w"], gc["dense0"]["w"])  # a fresh draw per step
    for got, want in zip(jax.tree.leaves(a), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(got, want)  # the rest of the step is round-to-nearest
