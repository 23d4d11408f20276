"""``jax.random``'s bits, uniforms and random signs, bit for bit, at a sixth of their CPU cost.

Stochastic rounding draws a random word per element at every step, so a run's random bits can
cost more than its arithmetic. jax hashes counters with Threefry-2x32 (20 rounds); on CPU it
lowers the hash as a loop of five blocks, which XLA runs as separate passes over the whole
array. Here the same rounds are written out, so XLA fuses the hash into one pass: 6.7M words
take 7.5 ms against jax's 50 ms on a 2-core AVX-512 machine, with the same values (the
counters and the key schedule are jax's: ``jax._src.random.threefry2x32``; tested against
``jax.random.bits``, ``uniform`` and ``rademacher`` for every width, several keys and
shapes).

Only jax's default generator on a CPU is reproduced: Threefry keys with
``jax_threefry_partitionable`` (jax's default since 0.5). Any other key, setting or backend
goes to jax's own functions (a GPU fuses the hash in a kernel of its own), so the values are
always jax's.

>>> import jax, jax.numpy as jnp
>>> key = jax.random.key(0)
>>> bool((bits(key, (5,), jnp.uint32) == jax.random.bits(key, (5,), jnp.uint32)).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bits", "uniform", "rademacher"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant


def bits(key: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    """``jax.random.bits(key, shape, dtype)``: unsigned integers of 8, 16, 32 or 64 bits."""
    dtype, shape = np.dtype(dtype), tuple(shape)
    pair = _threefry_pair(key)
    wide = dtype.itemsize == 8 and not jax.config.jax_enable_x64  # jax narrows it, or refuses
    if pair is None or dtype.kind != "u" or wide or math.prod(shape) >= 2**32:
        return jax.random.bits(key, shape, dtype)  # jax's values, or jax's error
    counts = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    hi, lo = _threefry2x32(pair[0], pair[1], jnp.zeros_like(counts), counts)
    if dtype.itemsize == 8:
        return (hi.astype(jnp.uint64) << jnp.uint64(32)) | lo.astype(jnp.uint64)
    return (hi ^ lo).astype(dtype)


def uniform(key: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype)`` on [0, 1) for float32 and float64: the
    mantissa of 1.0 filled with random bits, minus 1 (jax's construction)."""
    dtype = np.dtype(dtype)
    if dtype != np.float32 and (dtype != np.float64 or not jax.config.jax_enable_x64):
        return jax.random.uniform(key, tuple(shape), dtype)
    uint = np.dtype(f"uint{8 * dtype.itemsize}")
    word = bits(key, shape, uint) >> uint.type(8 * dtype.itemsize - np.finfo(dtype).nmant)
    one = uint.type(np.array(1.0, dtype).view(uint))
    floats = jax.lax.bitcast_convert_type(word | one, dtype) - dtype.type(1.0)
    return jnp.maximum(dtype.type(0.0), floats)  # jax's max(minval, floats * 1 + 0)


def rademacher(key: Any, shape: Sequence[int], dtype: Any) -> jax.Array:
    """``jax.random.rademacher(key, shape, dtype)``: +-1 with equal odds, drawn as jax does (a
    uniform of Python's float width, float64 under x64, below 1/2)."""
    heads = uniform(key, shape, jnp.result_type(float)) < 0.5
    return (2 * heads.astype(dtype) - 1).astype(dtype)


def _threefry_pair(key: Any) -> tuple[jax.Array, jax.Array] | None:
    """The two uint32 words of a Threefry key (typed, or raw under the default generator), or
    None when jax would draw some other way."""
    if not jax.config.jax_threefry_partitionable or jax.default_backend() != "cpu":
        return None  # off CPU jax fuses the hash itself (a GPU kernel): nothing to gain
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32" or key.shape:
            return None
        data = jax.random.key_data(key)
    elif (jax.config.jax_default_prng_impl == "threefry2x32" and key.shape == (2,)
          and key.dtype == jnp.uint32):  # fmt: skip
        data = key
    else:  # another generator, or a raw key jax refuses: jax's values or its error
        return None
    return data[0], data[1]


def _threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> list:
    """Threefry-2x32's 20 rounds on counter words (x1, x2), written out as jax's unrolled
    lowering (the one it uses off CPU): five blocks of four rounds, a key injection after
    each."""
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(_PARITY))
    x = [x1 + ks[0], x2 + ks[1]]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ ((x[1] << jnp.uint32(r)) | (x[1] >> jnp.uint32(32 - r)))
        x = [x[0] + ks[(block + 1) % 3], x[1] + ks[(block + 2) % 3] + jnp.uint32(block + 1)]
    return x
