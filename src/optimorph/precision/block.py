"""Block-scaled formats: OCP MX, per-tensor scaled FP8, and blockwise absmax code maps.

Each stores a tensor as small elements plus shared scales; :meth:`BlockFormat.round` returns the
decoded values (quantize, then dequantize) in float32, which is how a policy uses them: a state
slot in ``bnb8`` holds exactly the values bitsandbytes' 8-bit Adam would hold.

* **MX** (OCP Microscaling Formats v1.0): blocks of ``block`` (32) consecutive elements along
  ``axis`` share one E8M0 scale ``X = 2**e`` (default: the last axis longer than 1, so a column
  vector (n, 1) is blocked down its n entries; an explicit ``axis`` is taken as given); elements
  are E4M3, E5M2, E3M2,
  E2M3, E2M1 or INT8 (two's complement, ``k / 64``). ``scale`` picks the shared exponent from the
  block's largest magnitude ``amax = M * 2**E`` (1 <= M < 2):

  - ``floor`` (the spec): ``e = E - emax_elem``; the largest element may saturate;
  - ``ceil``: the smallest ``e`` with ``amax / 2**e <= max_elem``: nothing saturates;
  - ``even``: ``E`` of ``amax`` rounded to the element's precision (ties to even), so ``amax``
    is never rounded up past the element's top binade.

  ``e`` is clipped to [-127, 127]; an all-zero block gets ``e = -127``. Elements are rounded
  (nearest-even or stochastically) and saturate at the element's largest value, as the spec's
  conversion does. A NaN or inf in a block makes its scale NaN (code 0xFF), so the whole block
  decodes to NaN (spec section 6.3). Two options beyond the spec: ``rounding=nearest|stochastic``
  fixes the element rounding whatever the policy's ``rounding`` (absent: the policy's), and
  ``transform=hadamard|rht`` quantizes each block after a Hadamard transform (below).
* **Hadamard transforms** (``transform=``, MX only; ``block`` a power of two): each block b is
  stored as the MX code of ``(s * b) H`` and read back as ``s * (q H) / block``, with ``H`` the
  Sylvester Hadamard matrix of order ``block`` (entries +-1, ``H H = block I``, so the read-back
  is exact up to the float32 sums) and ``s`` a vector of signs. ``hadamard``: s = 1 (a
  deterministic transform); ``rht``: a random Hadamard transform, s drawn uniformly from {-1, 1}
  for every element of every block, fresh from each call's key (Tseng et al., Training LLMs with
  MXFP4, 2025, arXiv 2502.20586: the transform spreads a block's outliers over all of its
  elements, so the shared scale fits the rest better; with stochastic rounding the stored value
  is unbiased). The transform runs along the block axis of a stored tensor; Tseng et al. apply
  it to the operands of the backward pass's matrix products along their reduction dimension,
  with one sign vector for both operands: a policy's ``backward`` role
  (:mod:`optimorph.precision.products`).
* **Per-tensor scaled FP8** (``fp8e4m3``, ``fp8e5m2``; torchao's and FP8-LM's tensorwise
  scaling): ``s = max_elem / max(amax, 1e-12)`` in float32, stored ``fl8(x * s)`` (saturating),
  read back as ``q * fl(1 / s)``, the same compiled and eager. A NaN or inf anywhere makes the
  whole tensor NaN.
* **Code maps**: the tensor is flattened into blocks of ``block`` elements; each block stores
  its absmax (float32) and, per element, the index of the code nearest ``x / absmax`` (decided
  exactly when float64 is enabled, ties to the lower code); it reads back as
  ``code * absmax``. ``bnb8``: bitsandbytes' 8-bit dynamic (tree) map, block 256 as its
  8-bit optimizers use; ``int8``: the linear map ``i / 127``; ``ao4``: torchao's 4-bit optimizer
  state (the 4-bit dynamic map for signed values, ``k / 16``, k = 1..16, without zero, for
  unsigned ones; block 128). ``signed=auto`` (default) takes the unsigned map for the
  non-negative accumulators (state slots named ``v``, ``nu``, ``sum_sq``: Adam's second moment,
  which bitsandbytes and torchao store unsigned) and the signed map elsewhere. A block holding
  NaN or inf decodes to NaN; an all-zero block to zeros.

Blocks that do not divide the tensor are padded with zeros, which changes no block's amax; the
padding is dropped on decoding (and not counted as stored elements by :meth:`storage_bits`).

Arithmetic is float32 for float32/bf16/fp16 inputs and float64 for float64 inputs. MX scaling
is by powers of two and therefore exact, except that XLA on CPU flushes float32 subnormals: a
float32 block whose decoded values fall below 2**-126 loses them (float64 inputs do not).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph import random_bits
from optimorph.precision.formats import FP32, ROUNDINGS, SUBNORMALS, _check_choice
from optimorph.precision.rounding import _convert, round_to_grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ElementFormat:
    """An OCP MX element format: its grid (``mantissa_bits`` explicit bits above ``emin``, fixed
    spacing below), largest exponent ``emax`` and saturation bounds.

    INT8 is the grid of spacing 2**-6 on [-2, 2) (``mantissa_bits=7, emin=1``), two's complement.

    >>> E2M1.round(jnp.asarray([0.3, 2.6, 100.0, -5.1], jnp.float32)).tolist()
    [0.5, 3.0, 6.0, -6.0]
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    emin: int
    emax: int
    max_value: float
    min_value: float  # the most negative value (-2 for INT8, -max_value for the floats)
    is_int: bool = False

    @property
    def bits(self) -> int:
        return 8 if self.is_int else 1 + self.exponent_bits + self.mantissa_bits

    @property
    def unit_roundoff(self) -> float:
        return 2.0 ** -(self.mantissa_bits + 1)

    def round(self, x: Array, *, key: Array | None = None, flush: bool = False) -> Array:
        """Round float32/float64 ``x`` onto this element grid, saturating; keeps x's dtype."""
        y = round_to_grid(x, self.mantissa_bits, self.emin, key=key, flush=flush)
        if self.is_int:  # two's complement has no -0
            y = jnp.where(y == 0, jnp.zeros_like(y), y)
        return jnp.clip(y, self.min_value, self.max_value)

    def encode(self, q: Array) -> Array:
        """The uint8 codes of values ``q`` already on this grid (sign bit at bit ``bits - 1``)."""
        if self.is_int:
            k = jnp.round(q * 64.0).astype(jnp.int32)
            return (k & 0xFF).astype(jnp.uint8)
        a = jnp.abs(q)
        normal = a >= 2.0**self.emin
        mant_e, exp_e = jnp.frexp(jnp.where(normal, a, 1.0))  # a = mant_e * 2**exp_e
        biased = jnp.where(normal, exp_e - self.emin, 0)  # E + bias, E = exp_e - 1
        mant = jnp.where(
            normal,
            (mant_e * 2.0 - 1.0) * 2.0**self.mantissa_bits,
            a * 2.0 ** (self.mantissa_bits - self.emin),
        ).astype(jnp.int32)
        sign = jnp.signbit(q).astype(jnp.int32) << (self.exponent_bits + self.mantissa_bits)
        return (sign | (biased.astype(jnp.int32) << self.mantissa_bits) | mant).astype(jnp.uint8)

    def decode(self, codes: Array, dtype: Any = jnp.float32) -> Array:
        """Values of uint8 ``codes`` in ``dtype`` (E4M3's 0x7F/0xFF and E5M2's top exponent
        decode to NaN/inf, though :meth:`encode` never produces them)."""
        c = codes.astype(jnp.int32)
        if self.is_int:
            k = jnp.where(c >= 128, c - 256, c)
            return k.astype(dtype) * jnp.asarray(2.0**-6, dtype)
        m = self.mantissa_bits
        mant = (c & ((1 << m) - 1)).astype(dtype)
        biased = (c >> m) & ((1 << self.exponent_bits) - 1)
        sign = (c >> (self.exponent_bits + m)) & 1
        sub = mant * jnp.asarray(2.0 ** (self.emin - m), dtype)
        normal = (mant * jnp.asarray(2.0**-m, dtype) + 1) * _exp2(biased - 1 + self.emin, dtype)
        a = jnp.where(biased == 0, sub, normal)
        if self.name == "e4m3":
            a = jnp.where((c & 0x7F) == 0x7F, jnp.nan, a)
        elif self.name == "e5m2":
            a = jnp.where(biased == 31, jnp.where(mant == 0, jnp.inf, jnp.nan), a)
        return jnp.where(sign == 1, -a, a)


E4M3 = ElementFormat("e4m3", 4, 3, -6, 8, 448.0, -448.0)
E5M2 = ElementFormat("e5m2", 5, 2, -14, 15, 57344.0, -57344.0)
E3M2 = ElementFormat("e3m2", 3, 2, -2, 4, 28.0, -28.0)
E2M3 = ElementFormat("e2m3", 2, 3, 0, 2, 7.5, -7.5)
E2M1 = ElementFormat("e2m1", 2, 1, 0, 2, 6.0, -6.0)
INT8 = ElementFormat("int8", 0, 7, 1, 0, 127 / 64, -2.0, is_int=True)
ELEMENTS = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1, INT8)}

MX_NAMES = {
    "mxfp8e4m3": E4M3,
    "mxfp8e5m2": E5M2,
    "mxfp6e3m2": E3M2,
    "mxfp6e2m3": E2M3,
    "mxfp4": E2M1,
    "mxint8": INT8,
}
_MX_ALIASES = {"mxfp4e2m1": "mxfp4"}
FP8_NAMES = {"fp8e4m3": E4M3, "fp8e5m2": E5M2}
SCALE_RULES = ("floor", "ceil", "even")
TRANSFORMS = ("none", "hadamard", "rht")
SECOND_MOMENT_SLOTS = ("v", "nu", "sum_sq")  # non-negative accumulators: the unsigned map


def _exp2(e: Array, dtype: Any) -> Array:
    """2**e for an integer array e inside the normal range of ``dtype``, built from bits."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        bits = (e.astype(jnp.int64) + 1023) << 52
        return jax.lax.bitcast_convert_type(bits.astype(jnp.uint64), jnp.float64)
    bits = (e.astype(jnp.int32) + 127) << 23
    return jax.lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.float32)


def _scale_by(x: Array, e: Array) -> Array:
    """x * 2**e for e in [-254, 254], in two exact steps (each factor a normal float32)."""
    half = e // 2
    return x * _exp2(half, x.dtype) * _exp2(e - half, x.dtype)


def _work(x: Any, keep_float64: bool) -> Array:
    """x in the dtype block arithmetic runs in: float32 (rounded to it if wider), or float64
    kept where ``keep_float64`` (MX, whose power-of-two scaling is exact in either)."""
    x = jnp.asarray(x)
    if x.dtype == np.float64 and keep_float64:
        return x
    return FP32.round(x)


def _to_blocks(x: Array, block: int, axis: int) -> tuple[Array, Any]:
    """(..., n) -> (..., ceil(n / block), block) along ``axis``, zero-padded; and its inverse."""
    scalar = x.ndim == 0
    if scalar:
        x = x[None]
    axis = axis % x.ndim
    moved = jnp.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    nblocks = -(-n // block)
    # Zero padding: a block that the tensor does not fill is completed with zeros, which never
    # change its amax; the padding is cut off again in `back`.
    pad = [(0, 0)] * (moved.ndim - 1) + [(0, nblocks * block - n)]
    blocks = jnp.pad(moved, pad).reshape(*moved.shape[:-1], nblocks, block)

    def back(y: Array) -> Array:
        y = y.reshape(*moved.shape[:-1], nblocks * block)[..., :n]
        y = jnp.moveaxis(y, -1, axis)
        return y[0] if scalar else y

    return blocks, back


class BlockFormat:
    """What every block-scaled format offers a policy: a canonical ``name``, :meth:`round`
    (quantize-dequantize into float32), :meth:`storage_bits` and a ``unit_roundoff``.

    The values are stored in float32 (:attr:`storage_dtype`), so for the policy's compute dtype a
    block format counts as fp32 (:attr:`container`).
    """

    container = FP32
    is_native = True  # stored in a native dtype (float32): no float64 emulation needed
    storage_dtype = np.dtype(np.float32)

    def __str__(self) -> str:
        return self.name  # type: ignore[attr-defined]

    def for_slot(self, slot: str | None) -> BlockFormat:
        """The format a state slot named ``slot`` uses (only code maps' ``signed=auto`` cares)."""
        return self

    def keyed(self, policy_rounding: str) -> bool:
        """Whether rounding under a policy with ``policy_rounding`` draws random numbers (MX
        formats may say so themselves: ``rounding=stochastic``, ``transform=rht``)."""
        return policy_rounding == "stochastic"

    def under(self, policy_rounding: str) -> BlockFormat:
        """This format as a policy with ``policy_rounding`` uses it (MX: an unset ``rounding``
        becomes the policy's)."""
        return self


@dataclasses.dataclass(frozen=True)
class MXFormat(BlockFormat):
    """An OCP MX format: ``block`` elements along ``axis`` share an E8M0 scale 2**e.

    ``axis`` None (the default) is the last axis longer than 1. ``rounding`` None follows the
    caller (a key given: stochastic), 'nearest' or 'stochastic' fixes the element rounding.
    ``transform`` 'hadamard' or 'rht' quantizes each block after a (random) Hadamard transform
    (see the module docstring).

    >>> f = parse_block_format("mxfp4")
    >>> f.name, f.round(jnp.asarray([1.0, 0.2, -3.3, 0.0], jnp.float32)).tolist()
    ('mxfp4', [1.0, 0.25, -3.0, 0.0])
    >>> parse_block_format("mxfp8e4m3(scale=ceil,axis=0)").name
    'mxfp8e4m3(axis=0,scale=ceil)'
    >>> parse_block_format("mxfp4(transform=rht,rounding=stochastic)").name
    'mxfp4(rounding=stochastic,transform=rht)'
    """

    kind: str  # a key of MX_NAMES
    block: int = 32
    axis: int | None = None
    scale: str = "floor"
    rounding: str | None = None
    transform: str = "none"

    def __post_init__(self) -> None:
        if self.transform != "none" and self.block & (self.block - 1):
            raise ValueError(
                f"{self.kind}(transform={self.transform}): a Hadamard transform needs a block "
                f"that is a power of two, got block={self.block}"
            )

    @property
    def element(self) -> ElementFormat:
        return MX_NAMES[self.kind]

    @property
    def name(self) -> str:
        options = _options(
            self, block=32, axis=None, scale="floor", rounding=None, transform="none"
        )
        return self.kind + options

    @property
    def unit_roundoff(self) -> float:
        """The element's unit roundoff (relative to a value in the block's top binade)."""
        return self.element.unit_roundoff

    def keyed(self, policy_rounding: str) -> bool:
        """Whether rounding under a policy with ``policy_rounding`` draws random numbers."""
        return self.transform == "rht" or (self.rounding or policy_rounding) == "stochastic"

    def under(self, policy_rounding: str) -> MXFormat:
        """This format with an unset ``rounding`` resolved to the policy's."""
        if self.rounding is not None:
            return self
        return dataclasses.replace(self, rounding=policy_rounding)

    def block_axis(self, shape: tuple[int, ...]) -> int:
        """The axis blocks run along for a tensor of ``shape`` (non-negative; 0 for scalars)."""
        if self.axis is not None:
            return self.axis % len(shape) if shape else 0
        longer = [i for i, n in enumerate(shape) if n > 1]
        return longer[-1] if longer else max(len(shape) - 1, 0)

    def shared_exponent(self, amax: Array) -> Array:
        """The block's scale exponent e (int32) from its largest magnitude ``amax`` > 0."""
        el = self.element
        nbits, mbits, bias = (64, 52, 1023) if amax.dtype == np.float64 else (32, 23, 127)
        uint = jnp.uint64 if nbits == 64 else jnp.uint32
        bits = jax.lax.bitcast_convert_type(amax, uint)
        big_e = ((bits >> mbits) & uint(2 * bias + 1)).astype(jnp.int32) - bias
        mant = jax.lax.bitcast_convert_type(
            (bits & uint((1 << mbits) - 1)) | uint(bias << mbits), amax.dtype
        )  # amax / 2**E, in [1, 2)
        e = big_e - el.emax
        if self.scale == "ceil":
            e = e + (mant > el.max_value / 2.0**el.emax).astype(jnp.int32)
        elif self.scale == "even":
            rounded = jax.lax.reduce_precision(mant, 8, el.mantissa_bits - (1 if el.is_int else 0))
            e = e + (rounded >= 2).astype(jnp.int32)
        return jnp.where(amax > 0, jnp.clip(e, -127, 127), -127)

    def _keys(self, key: Array | None) -> tuple[Array | None, Array | None]:
        """(element rounding key or None, sign key or None) from the caller's key."""
        needs = [why for why, on in (("transform=rht", self.transform == "rht"),
                                     ("rounding=stochastic", self.rounding == "stochastic"))
                 if on]  # fmt: skip
        if key is None:
            if needs:
                raise ValueError(
                    f"{self.name}: {' and '.join(needs)} needs a PRNG key (round(x, key=...); "
                    "a precision policy passes its rounding keys)"
                )
            return None, None
        signs = None
        if self.transform == "rht":  # the element key of an untransformed format stays `key`
            key, signs = jax.random.split(key)
        return (None if self.rounding == "nearest" else key), signs

    def _quantize_blocks(self, blocks: Array, key: Array | None, flush: bool):
        """(element values, shared exponents, special-block mask) of blocked values."""
        # One pass finds both: the max propagates NaN, and inf is its own max. A special
        # block's elements are rounded as they come (NaN in, NaN out): every caller replaces
        # them, so they need no clean copy of the block.
        amax = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True)
        special = ~jnp.isfinite(amax)
        e = self.shared_exponent(jnp.where(special, 1, amax).astype(blocks.dtype))
        return self.element.round(_scale_by(blocks, -e), key=key, flush=flush), e, special

    def _blocks(self, x: Any) -> tuple[Array, Any]:
        x = _work(x, keep_float64=True)
        return _to_blocks(x, self.block, self.block_axis(x.shape))

    def round(self, x: Any, *, subnormals: str = "gradual", key: Array | None = None) -> Array:
        """Quantize ``x`` to this MX format and decode it, in float32 (which holds every MX
        value exactly; a float64 ``x`` is quantized directly, without a float32 rounding first).

        Args:
          x: an array of any float dtype.
          subnormals: 'gradual' keeps the element format's subnormals, 'flush' zeroes them.
          key: a PRNG key for stochastic rounding of the elements (and the signs of ``rht``);
            None: nearest, ties to even.
        """
        _check_choice("subnormals", subnormals, SUBNORMALS)
        elem_key, sign_key = self._keys(key)
        blocks, back = self._blocks(x)
        if self.transform != "none":
            h = jnp.asarray(_hadamard(self.block), blocks.dtype)
            signs = None
            if sign_key is not None:
                signs = random_bits.rademacher(sign_key, blocks.shape, blocks.dtype)
                blocks = blocks * signs
            blocks = jnp.matmul(blocks, h, precision=jax.lax.Precision.HIGHEST)
        q, e, special = self._quantize_blocks(blocks, elem_key, subnormals == "flush")
        y = jnp.where(special, jnp.nan, _scale_by(q, e))
        if self.transform != "none":
            y = jnp.matmul(y, h, precision=jax.lax.Precision.HIGHEST) * (1.0 / self.block)
            y = y * signs if signs is not None else y
        return _convert(back(y), self.storage_dtype)

    def reduction_operand(self, x: Any, key: Array | None, signs: Array | None) -> Array:
        """``x`` [rows, n] as one operand of a matrix product reducing over its last axis:
        blocks of ``block`` along that axis (zero-padded), transformed (``signs`` [nblocks,
        block] shared with the other operand, then H) and quantized, left in the transformed
        domain: [rows, nblocks, block] float values. Summed against the other operand's blocks
        and divided by ``block`` when transformed, they give the product of the quantized
        operands as MX hardware computes it (:mod:`optimorph.precision.products`).

        ``key`` draws the elements' stochastic rounding (None: nearest, ties to even)."""
        blocks, _ = _to_blocks(_work(x, keep_float64=True), self.block, -1)
        if self.transform != "none":
            if signs is not None:
                blocks = blocks * jnp.broadcast_to(signs.astype(blocks.dtype), blocks.shape)
            h = jnp.asarray(_hadamard(self.block), blocks.dtype)
            blocks = jnp.matmul(blocks, h, precision=jax.lax.Precision.HIGHEST)
        q, e, special = self._quantize_blocks(blocks, key, False)
        return jnp.where(special, jnp.nan, _scale_by(q, e))

    def encode(self, x: Any, *, key: Array | None = None) -> tuple[Array, Array]:
        """The stored bits: (uint8 E8M0 scale codes of shape (..., nblocks), uint8 element codes
        of shape (..., nblocks, block)), with the block axis moved last and the last block
        padded. Formats with a transform store the transformed values: not encoded here."""
        if self.transform != "none":
            raise ValueError(f"{self.name}: encode/decode are for untransformed MX formats")
        q, e, special = self._quantize_blocks(self._blocks(x)[0], self._keys(key)[0], False)
        scales = jnp.where(special, 255, e + 127).astype(jnp.uint8)[..., 0]
        return scales, jnp.where(special, 0, self.element.encode(q)).astype(jnp.uint8)

    def decode(self, scales: Array, elements: Array, dtype: Any = jnp.float32) -> Array:
        """Values of :meth:`encode`'s codes in the blocked layout (..., nblocks, block)."""
        values = self.element.decode(elements, dtype)
        s = scales.astype(jnp.int32)[..., None]
        return jnp.where(s == 255, jnp.nan, _scale_by(values, s - 127))

    def storage_bits(self, shape: tuple[int, ...]) -> int:
        """Element bits of every element plus 8 bits per (padded) block; with a transform the
        padding of a last, partial block is stored too (the transform fills it)."""
        n = math.prod(shape)
        along = shape[self.block_axis(shape)] if shape else 1
        nblocks = (n // along) * -(-along // self.block) if n else 0
        stored = nblocks * self.block if self.transform != "none" else n
        return stored * self.element.bits + 8 * nblocks


def _hadamard(n: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of order n (a power of two): entries +-1, symmetric."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@dataclasses.dataclass(frozen=True)
class ScaledFP8(BlockFormat):
    """FP8 with one float32 scale per tensor, ``s = max_elem / max(amax, 1e-12)``.

    >>> parse_block_format("fp8e4m3").round(jnp.asarray([1.0, -0.3], jnp.float32)).tolist()
    [1.0, -0.2857142...]
    """

    kind: str  # a key of FP8_NAMES

    @property
    def element(self) -> ElementFormat:
        return FP8_NAMES[self.kind]

    @property
    def name(self) -> str:
        return self.kind

    @property
    def unit_roundoff(self) -> float:
        return self.element.unit_roundoff

    def round(self, x: Any, *, subnormals: str = "gradual", key: Array | None = None) -> Array:
        """Scale by ``s``, round to the element format (saturating), multiply by 1 / s."""
        _check_choice("subnormals", subnormals, SUBNORMALS)
        x = _work(x, keep_float64=False)
        if x.size == 0:
            return x
        amax = jnp.max(jnp.abs(x))
        special = ~jnp.all(jnp.isfinite(x))
        # The barrier keeps s one rounded value: without it XLA rewrote 1 / (max / amax) into
        # amax / max under jit, 1 ulp away from the eager result in about half of all tensors.
        s = jax.lax.optimization_barrier(
            self.element.max_value / jnp.maximum(amax, 1e-12).astype(x.dtype)
        )
        q = self.element.round(
            jnp.clip(x * s, self.element.min_value, self.element.max_value),
            key=key,
            flush=subnormals == "flush",
        )
        # q * fl(1 / s), not q / s: XLA rewrites a division by a scalar into this product (even
        # eagerly), so it is written so, and the result is the same with and without jit.
        return jnp.where(special, jnp.nan, q * (1 / s))

    def storage_bits(self, shape: tuple[int, ...]) -> int:
        return 8 * math.prod(shape) + 32


def dynamic_map(
    signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8
) -> np.ndarray:
    """bitsandbytes' dynamic (tree) quantization map (``create_dynamic_map``), float32, sorted.

    Per decade 10**(i - max_exponent_bits + 1), i = 0..max_exponent_bits - 1: the midpoints of
    an evenly spaced grid on [0.1, 1] with 2**(i + total_bits - 1 - max_exponent_bits) (signed,
    and their negatives) or twice as many (unsigned) intervals; plus 0 and 1. Each code is the
    exact value rounded once to float32. bitsandbytes builds the grid with float32
    ``torch.linspace``, whose last bit depends on torch's CPU kernel, so its map can differ
    from this one in the last bit or two of some codes (tested: at most 2 ulp). Unlike
    bitsandbytes, no zeros pad a map shorter than 256 codes (torchao's 4-bit map is 16 codes).
    Reference: Dettmers et al., 8-bit Optimizers via Block-wise Quantization (2022), and
    bitsandbytes/functional.py.

    >>> m = dynamic_map(); len(m), float(m[0]), float(m[-1]), len(dynamic_map(True, 3, 4))
    (256, -0.99296..., 1.0, 16)
    """
    data: list[np.ndarray] = []
    non_sign_bits = total_bits - 1  # bitsandbytes counts a sign bit for the unsigned map too

    def decade(i: int, intervals: int) -> None:
        bounds = 0.1 + 0.9 * np.arange(intervals + 1) / intervals  # float64: near exact
        means = 10.0 ** (i - (max_exponent_bits - 1)) * (bounds[:-1] + bounds[1:]) / 2
        data.extend([means, -means] if signed else [means])

    for i in range(max_exponent_bits):
        decade(i, 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)))
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1
    if extra > 0:  # values with every exponent bit zero (no indicator bit): the last decade
        decade(max_exponent_bits - 1, extra)
    out = np.concatenate([*data, [0.0, 1.0]]).astype(np.float32)
    return np.sort(out)


# Searches in a code map's sorted table (its codes, or their midpoints) by bucket. A float's bits,
# read as an unsigned integer that orders like the floats, name its bucket by their top bits; a
# small table holds how many entries lie in earlier buckets, and the few entries of the value's
# own bucket are compared. The indices of jnp.searchsorted without its binary search's 8
# dependent gathers: 6.7M float64 values against bnb8's 255 midpoints take 11 ms on XLA CPU
# against 175 ms (the unrolled search; the rolled one is slower still).
_PER_BUCKET = 2  # the most entries of a table in one bucket: its compares per value
_MAX_BUCKET_BITS = 24  # at most 2**24 buckets (the code maps need 13 to 18 bits)


def _ordered_bits(x: Any, xp: Any = jnp) -> Any:
    """Unsigned integers in the order of the finite floats ``x`` (-0.0 taken as +0.0), as
    NumPy (``xp=np``) or jax arrays."""
    uint = np.uint64 if x.dtype == np.float64 else np.uint32
    top = uint(1 << (8 * np.dtype(uint).itemsize - 1))
    x = xp.where(x == 0, xp.zeros_like(x), x)
    bits = x.view(uint) if xp is np else jax.lax.bitcast_convert_type(x, uint)
    return xp.where(bits >= top, ~bits, bits | top)


def _bucket_table(values: np.ndarray) -> tuple[int, int, np.ndarray]:
    """``(shift, first, before)`` for a sorted table of distinct finite floats: the bucket of a
    value is its ordered bits >> shift (the fewest top bits that put at most ``_PER_BUCKET``
    entries in any bucket), and ``before[b - first]`` is how many entries lie in buckets below
    b, for b from the first entry's bucket to the last one's."""
    key = (values.dtype.str, values.tobytes())
    if key not in _BUCKETS:
        keys = _ordered_bits(values, np)
        if not np.all(keys[1:] > keys[:-1]):
            raise ValueError("bucket search needs sorted, distinct values")
        width = 8 * values.dtype.itemsize
        for bits in range(8, _MAX_BUCKET_BITS + 1):
            buckets = (keys >> np.uint64(width - bits)).astype(np.int64)
            if np.unique(buckets, return_counts=True)[1].max() <= _PER_BUCKET:
                break
        else:  # entries too close for 2**_MAX_BUCKET_BITS buckets: no compact table
            raise ValueError("bucket search: the table's entries are too close together")
        first = int(buckets[0])
        before = np.searchsorted(buckets, np.arange(first, buckets[-1] + 1), side="left")
        _BUCKETS[key] = (width - bits, first, before.astype(np.int32))
    return _BUCKETS[key]


_BUCKETS: dict[tuple[str, bytes], tuple[int, int, np.ndarray]] = {}


def _search(values: np.ndarray, x: Array, side: str = "left") -> Array:
    """``jnp.searchsorted(values, x, side)`` (int32) for a sorted NumPy table of distinct finite
    floats and finite ``x`` of the same dtype, by bucket (see ``_PER_BUCKET``): entries in
    earlier buckets are below x, entries in later ones above it, and those of x's own bucket
    sit at ``before[b]`` onwards, each compared (the table padded with +inf)."""
    if x.dtype != values.dtype:
        raise TypeError(f"_search: {x.dtype} values in a {values.dtype} table")
    shift, first, before = _bucket_table(values)
    bucket = (_ordered_bits(x) >> shift).astype(jnp.int32)
    start = jnp.asarray(before)[jnp.clip(bucket - first, 0, len(before) - 1)]
    padded = jnp.asarray(np.concatenate([values, np.full(_PER_BUCKET, np.inf, values.dtype)]))
    compare = jnp.less if side == "left" else jnp.less_equal
    return start + sum(compare(padded[start + k], x).astype(jnp.int32)
                       for k in range(_PER_BUCKET))  # fmt: skip


def _midpoints(codes: np.ndarray) -> np.ndarray:
    """The exact midpoints of neighbouring float32 codes, in float64."""
    lo, hi = codes[:-1].astype(np.float64), codes[1:].astype(np.float64)
    mids = (lo + hi) / 2
    assert np.array_equal(mids * 2 - lo, hi), "a midpoint is not exact in float64"
    return mids


def _nearest_exactly(x: Array, absmax: Array, ok: Array, codes: np.ndarray) -> Array:
    """Index of the code nearest x / absmax, ties to the lower code, decided exactly.

    x / absmax rounded to float32 picked the neighbouring code for values within an ulp of a
    midpoint. Here the midpoints of the float32 codes are exact float64 numbers, and so is
    midpoint * absmax (at most 26 + 24 bits), so ``midpoint * absmax < x`` is decided without
    rounding. x / absmax in float64 (XLA may form it as x * (1 / absmax)) only finds the
    midpoint next to it; the two midpoints around that point are then checked exactly.
    """
    table = _midpoints(codes)
    mids = jnp.asarray(table)
    x64 = _convert(x, np.float64)
    a64 = _convert(absmax, np.float64)
    j = _search(table, jnp.where(ok, x64 / a64, 0))
    below = mids[jnp.clip(j - 1, 0, len(mids) - 1)] * a64 < x64  # exact products
    at = mids[jnp.clip(j, 0, len(mids) - 1)] * a64 < x64
    idx = j - ((j > 0) & ~below) + ((j < len(mids)) & at)
    return jnp.where(ok, idx, int(np.searchsorted(table, 0.0, side="left")))


def _code_maps() -> dict[tuple[str, bool], np.ndarray]:
    linear = np.arange(-127, 128, dtype=np.float64) / 127
    return {
        ("bnb8", True): dynamic_map(True),
        ("bnb8", False): dynamic_map(False),
        ("int8", True): linear.astype(np.float32),
        ("int8", False): (np.arange(256, dtype=np.float64) / 255).astype(np.float32),
        ("ao4", True): dynamic_map(True, 3, 4),
        ("ao4", False): (np.arange(1, 17, dtype=np.float64) / 16).astype(np.float32),
    }


CODE_MAPS = _code_maps()
CODE_DEFAULTS = {"bnb8": (256, 8), "int8": (256, 8), "ao4": (128, 4)}  # block, bits per element


@dataclasses.dataclass(frozen=True)
class CodeMapFormat(BlockFormat):
    """Blockwise absmax quantization with a code map: ``code[idx] * absmax`` per element.

    ``signed``: None (auto: the unsigned map for the slots in ``SECOND_MOMENT_SLOTS``), True
    or False. Nearest rounding takes the first code whose float32 midpoint with its upper
    neighbour is >= x / absmax (ties go down); stochastic rounding picks one of the two codes
    around x / absmax with probabilities by distance, so it is unbiased in the normalized value.

    ``min_size``: tensors with fewer elements stay in float32, as bitsandbytes' 8-bit
    optimizers keep them (``min_8bit_size=4096``; torchao's low-bit optimizers do the same
    under 4096 elements): biases and small layers, whose blocks are few and whose second
    moments would otherwise lose their small entries to the map's zero.

    >>> f = parse_block_format("bnb8(block=2048)")
    >>> f.name, f.for_slot("v").name, f.storage_bits((4096,)) / 4096
    ('bnb8(block=2048)', 'bnb8(block=2048,signed=false)', 8.015625)
    >>> parse_block_format("bnb8(min_size=4096)").storage_bits((256,)) / 256
    32.0
    """

    kind: str  # a key of CODE_DEFAULTS
    block: int | None = None
    signed: bool | None = None
    min_size: int | None = None  # fewer elements: float32 (None: every tensor is quantized)

    @property
    def block_size(self) -> int:
        return self.block if self.block is not None else CODE_DEFAULTS[self.kind][0]

    @property
    def bits(self) -> int:
        return CODE_DEFAULTS[self.kind][1]

    @property
    def codes(self) -> np.ndarray:
        return CODE_MAPS[self.kind, self.signed is not False]

    @property
    def name(self) -> str:
        signed = {None: "auto", True: "true", False: "false"}[self.signed]
        return self.kind + _options(
            self, block=CODE_DEFAULTS[self.kind][0], signed="auto", min_size=0,
            values={"signed": signed},
        )  # fmt: skip

    @property
    def unit_roundoff(self) -> float:
        """Half the largest gap between neighbouring codes, relative to the block's absmax."""
        return float(np.max(np.diff(self.codes.astype(np.float64)))) / 2

    def for_slot(self, slot: str | None) -> CodeMapFormat:
        if self.signed is not None:
            return self
        return dataclasses.replace(self, signed=slot not in SECOND_MOMENT_SLOTS)

    def round(self, x: Any, *, subnormals: str = "gradual", key: Array | None = None) -> Array:
        """Quantize ``x`` blockwise to the code map and decode it (float32)."""
        _check_choice("subnormals", subnormals, SUBNORMALS)
        x32 = _work(x, keep_float64=False)
        if self._kept(x32.shape):
            return x32
        blocks, back = _to_blocks(x32.reshape(-1), self.block_size, -1)
        absmax = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True)
        special = ~jnp.all(jnp.isfinite(blocks), axis=-1, keepdims=True)
        ok = (absmax > 0) & ~special
        safe = jnp.where(ok, absmax, 1)
        normed = jnp.where(ok, blocks / safe, 0)
        codes = self.codes
        if key is None and jax.config.jax_enable_x64:
            idx = _nearest_exactly(blocks, safe, ok, codes)
        elif key is None:  # float32 only: within an ulp of a midpoint the choice may be off
            mids = (codes[:-1] + codes[1:]) / np.float32(2)
            idx = _search(mids, normed)
        else:
            lo = _search(codes, normed, side="right")
            lo = jnp.clip(lo - 1, 0, len(codes) - 2)
            c = jnp.asarray(codes)
            c_lo, c_hi = c[lo], c[lo + 1]
            p = jnp.clip((normed - c_lo) / (c_hi - c_lo), 0, 1)
            u = random_bits.uniform(key, normed.shape, jnp.float32)
            idx = lo + (u < p).astype(lo.dtype)
        y = jnp.asarray(codes)[idx] * jnp.where(ok, absmax, 0)
        y = jnp.where(special, jnp.nan, y)
        return back(y).reshape(x32.shape)

    def _kept(self, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of ``shape`` stays in float32 (under ``min_size`` elements)."""
        return self.min_size is not None and math.prod(shape) < self.min_size

    def storage_bits(self, shape: tuple[int, ...]) -> int:
        """``bits`` per element plus a float32 absmax per (padded) block; 32 bits per element
        for a tensor kept in float32 (``min_size``)."""
        n = math.prod(shape)
        if self._kept(tuple(shape)):
            return 32 * n
        return n * self.bits + 32 * -(-n // self.block_size)


def _options(fmt: Any, values: dict[str, str] | None = None, **defaults: Any) -> str:
    """'(k=v,...)' for the options of ``fmt`` that differ from their defaults, sorted; ''."""
    items = []
    for name, default in sorted(defaults.items()):
        value = (values or {}).get(name, getattr(fmt, name))
        if value is None:
            continue
        if value != default:
            items.append(f"{name}={value}")
    return f"({','.join(items)})" if items else ""


_CALL = re.compile(r"^([a-z0-9]+)\s*(?:\((.*)\))?$")
_BLOCK_HELP = (
    "block formats: mxfp8e4m3, mxfp8e5m2, mxfp6e3m2, mxfp6e2m3, mxfp4, mxint8 "
    "(options block=N, axis=K, scale=floor|ceil|even, rounding=nearest|stochastic, "
    "transform=none|hadamard|rht), fp8e4m3, fp8e5m2 (no options), "
    "bnb8, int8, ao4 (options block=N, signed=auto|true|false, min_size=N: smaller tensors "
    "stay float32)"
)


def parse_block_format(text: str) -> BlockFormat | None:
    """A block format from its name, e.g. ``mxfp4``, ``bnb8(block=256)``; None when the name is
    no block format's; ValueError (listing the valid options) when its options are bad."""
    match = _CALL.match(text.strip().lower())
    if not match:
        return None
    kind, args = match[1], match[2]
    kind = _MX_ALIASES.get(kind, kind)
    if kind not in MX_NAMES and kind not in FP8_NAMES and kind not in CODE_DEFAULTS:
        return None
    options: dict[str, str] = {}
    for item in filter(None, (a.strip() for a in (args or "").split(","))):
        name, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not value or name in options:
            raise ValueError(f"bad option {item!r} in format {text!r}; {_BLOCK_HELP}")
        options[name] = value
    if kind in MX_NAMES:
        allowed = ("block", "axis", "scale", "rounding", "transform")
    elif kind in CODE_DEFAULTS:
        allowed = ("block", "signed", "min_size")
    else:
        allowed = ()
    unknown = [n for n in options if n not in allowed]
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(
            f"format {text!r}: unknown option {unknown[0]!r}; {kind} takes {valid}. {_BLOCK_HELP}"
        )
    try:
        block = int(options["block"]) if "block" in options else None
        axis = int(options["axis"]) if "axis" in options else None
        min_size = int(options["min_size"]) if "min_size" in options else None
    except ValueError:
        raise ValueError(f"format {text!r}: block, axis and min_size must be integers") from None
    if block is not None and block < 1:
        raise ValueError(f"format {text!r}: block must be >= 1, got {block}")
    if min_size is not None and min_size < 0:
        raise ValueError(f"format {text!r}: min_size must be >= 0, got {min_size}")
    if kind in FP8_NAMES:
        return ScaledFP8(kind)
    if kind in MX_NAMES:
        scale = options.get("scale", "floor")
        if scale not in SCALE_RULES:
            raise ValueError(
                f"format {text!r}: scale must be one of {', '.join(SCALE_RULES)}; got {scale!r}"
            )
        rounding = options.get("rounding")
        if rounding not in (None, *ROUNDINGS):
            raise ValueError(
                f"format {text!r}: rounding must be one of {', '.join(ROUNDINGS)}; got "
                f"{rounding!r}"
            )
        transform = options.get("transform", "none")
        if transform not in TRANSFORMS:
            raise ValueError(
                f"format {text!r}: transform must be one of {', '.join(TRANSFORMS)}; got "
                f"{transform!r}"
            )
        return MXFormat(kind, block if block is not None else 32, axis, scale, rounding, transform)
    signed_text = options.get("signed", "auto")
    flags = {"auto": None, "true": True, "false": False}
    if signed_text not in flags:
        raise ValueError(
            f"format {text!r}: signed must be auto, true or false; got {signed_text!r}"
        )
    block = None if block == CODE_DEFAULTS[kind][0] else block
    return CodeMapFormat(kind, block, flags[signed_text], min_size or None)
