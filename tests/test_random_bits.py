"""optimorph.random_bits against jax.random, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimorph import random_bits

KEYS = [jax.random.key(0), jax.random.key(2**31 + 5), jax.random.PRNGKey(7),
        jax.random.fold_in(jax.random.key(3), 11)]  # fmt: skip
SHAPES = [(), (1,), (5,), (3, 4), (2, 3, 257)]


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint16, jnp.uint32, jnp.uint64])
def test_bits_are_jax_random_bits(dtype):
    for key in KEYS:
        for shape in SHAPES:
            want = jax.random.bits(key, shape, dtype)
            got = random_bits.bits(key, shape, dtype)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            # the same compiled, and under vmap over keys (as the engine's lanes call it)
            np.testing.assert_array_equal(jax.jit(random_bits.bits, static_argnums=(1, 2))(
                key, shape, dtype), want)  # fmt: skip
    keys = jax.random.split(jax.random.key(9), 4)
    np.testing.assert_array_equal(jax.vmap(lambda k: random_bits.bits(k, (7,), dtype))(keys),
                                  jax.vmap(lambda k: jax.random.bits(k, (7,), dtype))(keys))


@pytest.mark.parametrize(
    "name, dtype",
    [("uniform", jnp.float32), ("uniform", jnp.float64), ("rademacher", jnp.float32),
     ("rademacher", jnp.float64), ("rademacher", jnp.int32)],
)  # fmt: skip
def test_uniforms_and_signs_are_jax_randoms(name, dtype):
    ours = jax.jit(getattr(random_bits, name), static_argnums=(1, 2))
    for key in KEYS:
        for shape in SHAPES:
            want = getattr(jax.random, name)(key, shape, dtype)
            got = ours(key, shape, dtype)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_what_jax_refuses_is_refused_the_same_way():
    with pytest.raises(ValueError, match="unsigned"):
        jax.random.bits(jax.random.key(0), (3,), jnp.int32)
    with pytest.raises(ValueError, match="unsigned"):
        random_bits.bits(jax.random.key(0), (3,), jnp.int32)
    raw = jnp.array([0, 1], jnp.int32)  # a raw key must be uint32: jax says so, not a cast
    with pytest.raises(TypeError):
        jax.random.bits(raw, (3,), jnp.uint32)
    with pytest.raises(TypeError):
        random_bits.bits(raw, (3,), jnp.uint32)


def test_other_generators_are_left_to_jax():
    key = jax.random.key(1, impl="rbg")
    u32, f32 = jnp.uint32, jnp.float32
    np.testing.assert_array_equal(random_bits.bits(key, (6,), u32),
                                  jax.random.bits(key, (6,), u32))
    np.testing.assert_array_equal(random_bits.uniform(key, (6,), f32),
                                  jax.random.uniform(key, (6,), f32))
