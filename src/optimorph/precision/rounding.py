"""Rounding kernels: round to nearest (ties to even) and stochastic rounding with explicit keys.

Rounding rules (``u = 2**-(mantissa_bits + 1)`` is the unit roundoff):

* nearest: round to nearest, ties to even; overflow gives +-inf, NaN stays NaN, -0.0 stays -0.0.
* gradual underflow (default): below the smallest normal, round to the nearest multiple of the
  smallest subnormal, as IEEE formats do. ``reduce_precision`` on CPU flushes that range to zero,
  so it is emulated here; ``subnormals='flush'`` gives the flush-to-zero behaviour instead.
* stochastic: round ``|x|`` down to the grid spacing ``q`` and up with probability
  ``(|x| - lo) / q``, so the result is unbiased in expectation. The key is always explicit: the
  same key gives the same rounding.

Platform facts the code works around (XLA on CPU, measured with jax 0.10.2):

* conversions between float64 and float32/bfloat16 flush float32-subnormal values to zero (both
  ways), so exact conversions of those values go through integer bit patterns (:func:`_convert`);
* float64 -> bfloat16 conversion rounds twice (through float32), so a value is first rounded in the
  wide dtype and only then converted, exactly;
* under ``jax.jit`` XLA may keep excess precision and drop a ``convert(convert(x, bf16), f32)``
  round trip, so every rounding whose result is used at a wider dtype goes through
  ``reduce_precision`` or bit operations, which it must keep;
* arithmetic flushes float32/float64/bfloat16 subnormals (float16 keeps them): that is the
  platform's arithmetic, not something a rounding function can change.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph import random_bits
from optimorph.precision.formats import FP32, Format, _format_of

Array = jax.Array
PyTree = Any

# ---------------------------------------------------------------------------------------------
# Rounding kernels (values stay in the working dtype)


def round_in(
    x: Array, fmt: Format, *, subnormals: str = "gradual", key: Array | None = None
) -> Array:
    """Round float32/float64 ``x`` to the values of ``fmt``, keeping x's dtype.

    ``fmt`` must fit in x's dtype. This is the jit-safe kernel behind :meth:`Format.round`: the
    rounding is done by ``reduce_precision`` or bit operations, which XLA cannot elide.
    """
    work = _format_of(x.dtype)
    if work is None or not work.contains(fmt):
        raise ValueError(f"cannot round {x.dtype} values to {fmt.name} in place")
    if key is None:
        y = _round_nearest(x, fmt, work, subnormals)
    else:
        y = _round_stochastic(x, fmt, work, key)
    if subnormals == "flush":
        y = jnp.where(jnp.abs(y) < fmt.smallest_normal, jnp.copysign(jnp.zeros_like(y), x), y)
    return y


def _round_nearest(x: Array, fmt: Format, work: Format, subnormals: str) -> Array:
    if fmt == work:
        return x
    y = jax.lax.reduce_precision(x, fmt.exponent_bits, fmt.mantissa_bits)
    if subnormals == "gradual" and fmt.exponent_bits < work.exponent_bits:
        # reduce_precision flushes |x| < smallest normal; round those to the subnormal grid.
        # Scaling by 2**k is exact: the target range is far inside the working dtype's normal
        # range (k <= 562 for float64 with exponent_bits <= 10; k <= 85 for float32).
        k = fmt.mantissa_bits - fmt.emin
        up, down = _pow2(k, x.dtype), _pow2(-k, x.dtype)
        tiny = jnp.abs(x) < fmt.smallest_normal
        y = jnp.where(tiny, jnp.round(x * up) * down, y)  # jnp.round: ties to even
    return y


def _round_stochastic(x: Array, fmt: Format, work: Format, key: Array) -> Array:
    """Round |x| down to the grid of ``fmt`` and up with probability (|x| - lo) / q.

    On the normal range this is the integer trick: add D = (work mantissa - fmt mantissa) random
    bits to the bit pattern of |x| and truncate those bits; a carry moves into the exponent
    exactly as the grid does, and past the largest finite value it reaches inf. Below the
    smallest normal the spacing is fixed (q = smallest subnormal): scale, floor, add a Bernoulli.
    """
    if fmt == work:
        return x
    nbits = 64 if x.dtype == np.float64 else 32
    uint = jnp.uint64 if nbits == 64 else jnp.uint32
    drop = work.mantissa_bits - fmt.mantissa_bits
    rand = random_bits.bits(key, x.shape, uint)
    a = jnp.abs(x)
    bits = jax.lax.bitcast_convert_type(a, uint)
    if drop > 0:
        bits = (bits + (rand >> (nbits - drop))) & ~uint((1 << drop) - 1)
    y = jax.lax.bitcast_convert_type(bits, x.dtype)
    if fmt.exponent_bits < work.exponent_bits:
        k = fmt.mantissa_bits - fmt.emin
        s = a * _pow2(k, x.dtype)
        low = jnp.floor(s)
        # a uniform u in [0, 1) on a grid as fine as the working dtype (exact integer * 2**-p)
        p = work.mantissa_bits + 1
        u = (rand >> (nbits - p)).astype(x.dtype) * _pow2(-p, x.dtype)
        sub = (low + (u < s - low).astype(x.dtype)) * _pow2(-k, x.dtype)
        y = jnp.where(a < fmt.smallest_normal, sub, y)
    y = jnp.where(y > fmt.max_value, jnp.inf, y).astype(x.dtype)
    return jnp.where(jnp.isnan(x), x, jnp.copysign(y, x))


def _pow2(k: int, dtype: np.dtype) -> Array:
    return jnp.asarray(2.0**k, dtype)


def _convert(x: Array, dtype: np.dtype) -> Array:
    """Convert ``x`` to ``dtype`` exactly (values must be representable), keeping subnormals.

    XLA on CPU flushes float32-subnormal values (which include bf16 subnormals) when converting
    between float64 and float32/bfloat16, so those values are moved through bit patterns.
    """
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(dtype)
    if dtype == np.float64 and x.dtype in (np.float32, jnp.bfloat16):
        x32 = x.astype(jnp.float32)  # bf16 -> f32 is a bit shift, subnormals survive
        bits = jax.lax.bitcast_convert_type(x32, jnp.uint32)
        sub = (bits & 0x7F800000) == 0
        magnitude = (bits & 0x007FFFFF).astype(jnp.float64) * _pow2(-149, jnp.float64)
        value = jnp.where(bits >> 31 == 1, -magnitude, magnitude)
        return jnp.where(sub, value, x32.astype(jnp.float64))
    if x.dtype == np.float64 and dtype in (np.float32, jnp.bfloat16):
        a = jnp.abs(x)
        sign = jnp.signbit(x).astype(jnp.uint32) << 31
        mantissa = (a * _pow2(149, jnp.float64)).astype(jnp.uint32)
        sub = jax.lax.bitcast_convert_type(sign | mantissa, jnp.float32)
        x32 = jnp.where(a < FP32.smallest_normal, sub, x.astype(jnp.float32))
        return x32.astype(dtype)  # f32 -> bf16 keeps subnormals
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------------
# float32 sums with gradual underflow, without float64

_SIGN32, _MAGNITUDE32 = 0x80000000, 0x7FFFFFFF
_SCALE = 64  # 2**64 lifts every float32 below 2**-101 into the normal range, far from overflow
_TINY_OPERANDS = (127 - 101) << 23  # bit pattern of 2**-101


def add_float32(p: Array, u: Array) -> Array:
    """The IEEE float32 sum ``p + u``, rounded to nearest with gradual underflow.

    XLA on CPU adds float32 with subnormal inputs read as zero and subnormal results flushed.
    Where ``max(|p|, |u|) >= 2**-101`` that changes nothing: a subnormal operand is below half
    the other's spacing (so the sum rounds to the other operand, as the flushed add gives), and
    a sum that cancels to below 2**-126 is impossible (it is a multiple of 2**-125). Where both
    are smaller, both are lifted by 2**64 with integer operations (a subnormal through its
    mantissa), added as normal numbers, and brought back: a result at or above 2**-126 by
    its exponent, one below as an exact multiple of 2**-149 (a sum of multiples of 2**-149
    below 2**-126 needs no rounding). Elementwise, float32 only: the same bits as the sum
    formed in float64 and rounded once, at a fraction of its cost.
    """
    bits_p = jax.lax.bitcast_convert_type(p, jnp.uint32)
    bits_u = jax.lax.bitcast_convert_type(u, jnp.uint32)
    magnitude = jnp.uint32(_MAGNITUDE32)
    tiny = jnp.maximum(bits_p & magnitude, bits_u & magnitude) < jnp.uint32(_TINY_OPERANDS)
    lifted = _lift(bits_p) + _lift(bits_u)
    return jnp.where(tiny, _lower(lifted), p + u)


def _lift(bits: Array) -> Array:
    """2**64 x for |x| < 2**-101, from x's bit pattern, exactly."""
    sign, magnitude = bits & jnp.uint32(_SIGN32), bits & jnp.uint32(_MAGNITUDE32)
    normal = magnitude + jnp.uint32(_SCALE << 23)
    # a subnormal m 2**-149: (1 + m 2**-23) 2**-62 - 2**-62 = m 2**-85, exact (Sterbenz)
    offset = jax.lax.bitcast_convert_type(magnitude | jnp.uint32((127 - 62) << 23), jnp.float32)
    subnormal = jax.lax.bitcast_convert_type(offset - jnp.float32(2.0**-62), jnp.uint32)
    lifted = jnp.where(magnitude < jnp.uint32(1 << 23), subnormal, normal)
    return jax.lax.bitcast_convert_type(lifted | sign, jnp.float32)


def _lower(x: Array) -> Array:
    """2**-64 x for a multiple x of 2**-85 below 2**-37, with gradual underflow, exactly."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    sign, magnitude = bits & jnp.uint32(_SIGN32), bits & jnp.uint32(_MAGNITUDE32)
    normal = magnitude - jnp.uint32(_SCALE << 23)
    subnormal = (jnp.abs(x) * jnp.float32(2.0**85)).astype(jnp.uint32)  # an integer < 2**23
    small = magnitude < jnp.uint32((127 - 126 + _SCALE) << 23)  # below 2**-62 = 2**64 2**-126
    lowered = jnp.where(small, subnormal, normal) | sign
    return jax.lax.bitcast_convert_type(lowered, jnp.float32)


def round_to_grid(
    x: Array, mantissa_bits: int, emin: int, *, key: Array | None = None, flush: bool = False
) -> Array:
    """Round float32/float64 ``x`` to the binary grid with ``mantissa_bits`` explicit bits whose
    smallest normal exponent is ``emin``, unbounded above (the caller saturates), keeping x's dtype.

    This is the element rounding of the block formats, whose element formats (OCP's E4M3,
    E3M2, ...) have no inf and so no reserved top exponent: their grid is the one of an IEEE
    format with the same ``emin`` and mantissa, and only their largest value differs.
    ``key`` None rounds to nearest, ties to even; a key rounds stochastically (up with
    probability (|x| - lo) / q). Below ``2**emin`` the spacing is fixed at ``2**(emin -
    mantissa_bits)`` (gradual underflow), or results there become zero with ``flush``.
    NaN and inf pass through.

    >>> import jax.numpy as jnp
    >>> round_to_grid(jnp.asarray([1.3, 300.0, 0.007], jnp.float32), 1, 0).tolist()  # E2M1 grid
    [1.5, 256.0, 0.0]
    """
    work = _format_of(x.dtype)
    if work is None or work not in (FP32, _format_of(np.dtype(np.float64))):
        raise ValueError(f"round_to_grid works in float32 or float64, got {x.dtype}")
    k = mantissa_bits - emin  # |x| * 2**k is an integer on the subnormal range
    # Scaling by 2**k is exact: |k| <= 160 keeps the scaled subnormal range inside float32's
    # normal range (the block formats' element emin >= -14 and mantissa <= 7).
    up, down = _pow2(k, x.dtype), _pow2(-k, x.dtype)
    a = jnp.abs(x)
    tiny = a < _pow2(emin, x.dtype)
    if key is None:
        y = jax.lax.reduce_precision(x, work.exponent_bits, mantissa_bits)
        y = jnp.where(tiny, jnp.round(x * up) * down, y)  # jnp.round: ties to even
    else:
        nbits = 64 if x.dtype == np.float64 else 32
        uint = jnp.uint64 if nbits == 64 else jnp.uint32
        drop = work.mantissa_bits - mantissa_bits
        rand = random_bits.bits(key, x.shape, uint)
        bits = jax.lax.bitcast_convert_type(a, uint)
        if drop > 0:  # add `drop` random bits and truncate them: a carry is a round-up
            bits = (bits + (rand >> (nbits - drop))) & ~uint((1 << drop) - 1)
        y = jax.lax.bitcast_convert_type(bits, x.dtype)
        s = a * up
        low = jnp.floor(s)
        p = work.mantissa_bits + 1
        u = (rand >> (nbits - p)).astype(x.dtype) * _pow2(-p, x.dtype)
        y = jnp.where(tiny, (low + (u < s - low).astype(x.dtype)) * down, y)
        y = jnp.where(jnp.isfinite(x), jnp.copysign(y, x), x)
    if flush:
        y = jnp.where(jnp.abs(y) < _pow2(emin, x.dtype), jnp.copysign(jnp.zeros_like(y), x), y)
    return y


def stalled_fraction(params_old: PyTree, updates: PyTree, params_new: PyTree) -> Array:
    """Fraction of coordinates asked to move (update != 0) that did not (rounding absorbed the
    update); 0 when no coordinate was asked to move. A float32 scalar.

    >>> float(stalled_fraction({"w": jnp.ones(2)}, {"w": jnp.asarray([1e-9, 1.0])},
    ...                        {"w": jnp.asarray([1.0, 2.0])}))
    0.5
    """
    moved, asked = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    leaves = (jax.tree_util.tree_leaves(t) for t in (params_old, updates, params_new))
    for old, u, new in zip(*leaves, strict=True):
        nonzero = jnp.asarray(u) != 0
        asked += jnp.sum(nonzero, dtype=jnp.int32)
        moved += jnp.sum(nonzero & (new == old), dtype=jnp.int32)
    return moved.astype(jnp.float32) / jnp.maximum(asked, 1).astype(jnp.float32)


def round_to_bits(x: jax.Array, bits: jax.Array) -> jax.Array:
    """Round float64 ``x`` to ``bits`` explicit mantissa bits (nearest, ties to even).

    ``bits`` may be traced (0..52), which is what lets one program serve every precision. The
    exponent range stays float64's; NaN and inf pass through.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> float(round_to_bits(jnp.float64(1 + 2**-11 + 2**-30), 10))  # up: above the tie
    1.0009765625
    >>> float(round_to_bits(jnp.float64(1 + 2**-11), 10))  # a tie: to even (1.0)
    1.0
    """
    u = jax.lax.bitcast_convert_type(x, jnp.uint64)
    drop = (52 - jnp.asarray(bits, jnp.uint64)).astype(jnp.uint64)
    one = jnp.uint64(1)
    half = jnp.where(drop > 0, one << jnp.maximum(drop, one) - one, jnp.uint64(0))
    lsb = (u >> drop) & one
    mask = ~((one << drop) - one)
    # Adding half - 1 + lsb then truncating is round-half-to-even; a carry into the exponent
    # is the correct rounding up to the next binade (and to inf past the largest value).
    rounded = (u + half - one + lsb) & mask
    rounded = jnp.where(drop > 0, rounded, u)
    out = jax.lax.bitcast_convert_type(rounded, jnp.float64)
    return jnp.where(jnp.isfinite(x), out, x)

