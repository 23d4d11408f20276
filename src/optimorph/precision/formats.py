"""Number formats: the native ones (fp64, fp32, bf16, fp16) and emulated ``eXmY`` formats.

A :class:`Format` is an IEEE-like binary format with ``exponent_bits`` and ``mantissa_bits``
(explicit bits; the top exponent is reserved for inf/NaN, so ``e4m3`` is not OCP's ``E4M3FN``).
The four native formats are stored in their own dtype; every other ``eXmY`` format is
*emulated*: computed in float64 and rounded with ``lax.reduce_precision``
(:mod:`optimorph.precision.rounding`). Block-scaled formats (MX, scaled FP8, 8- and 4-bit code
maps) live in :mod:`optimorph.precision.block`; :func:`parse_format` reads both kinds of name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

if TYPE_CHECKING:
    from optimorph.precision.block import BlockFormat

ROUNDINGS = ("nearest", "stochastic")
SUBNORMALS = ("gradual", "flush")

def require_x64(what: str) -> None:
    """Raise a RuntimeError saying how to enable float64 when ``jax_enable_x64`` is off.

    optimorph never flips the flag itself: it changes every default dtype of the user's program.
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            f"{what} needs float64, but jax_enable_x64 is off. Enable it at program start with "
            'jax.config.update("jax_enable_x64", True), or set the environment variable '
            "JAX_ENABLE_X64=1."
        )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Formats


@dataclasses.dataclass(frozen=True)
class Format:
    """An IEEE-like binary floating-point format: 1 sign, ``exponent_bits``, ``mantissa_bits``.

    ``native_dtype`` is the jnp dtype for fp64/fp32/bf16/fp16 and None for emulated formats,
    whose values are stored in float64.

    >>> f = parse_format("e5m10")
    >>> f.unit_roundoff, f.max_value, f.is_native
    (0.00048828125, 65504.0, False)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    native_dtype: np.dtype | None = None

    @property
    def is_native(self) -> bool:
        return self.native_dtype is not None

    @property
    def storage_dtype(self) -> np.dtype:
        """The dtype values of this format are stored in: the native dtype, else float64."""
        return self.native_dtype if self.native_dtype is not None else np.dtype(np.float64)

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-(mantissa_bits + 1): the relative error bound of round-to-nearest."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number, 2 - 2**(exponent_bits - 1)."""
        return 2 - 2 ** (self.exponent_bits - 1)

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number, 2**(exponent_bits - 1) - 1."""
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mantissa_bits)

    @property
    def max_value(self) -> float:
        return math.ldexp(2.0 - 2.0**-self.mantissa_bits, self.emax)

    def contains(self, other: Format) -> bool:
        """Whether every value of ``other`` is exactly representable in this format."""
        return (
            self.exponent_bits >= other.exponent_bits and self.mantissa_bits >= other.mantissa_bits
        )

    def __str__(self) -> str:
        return self.name

    def round(self, x: Any, *, subnormals: str = "gradual", key: Array | None = None) -> Array:
        """Round ``x`` to this format; the result has dtype :attr:`storage_dtype`.

        Args:
          x: array or scalar of any float (or integer) dtype.
          subnormals: 'gradual' (IEEE underflow through subnormals) or 'flush' (results below
            the smallest normal become zero, sign kept).
          key: a PRNG key for stochastic rounding; None rounds to nearest, ties to even.

        Returns:
          The rounded values in :attr:`storage_dtype`. Traceable and jit-safe.

        >>> float(FP16.round(65520.0)), float(parse_format("e8m3").round(1.3))
        (inf, 1.25)
        """
        from optimorph.precision.rounding import _convert, round_in  # rounding imports formats

        _check_choice("subnormals", subnormals, SUBNORMALS)
        x = jnp.asarray(x)
        work = self._work_dtype(x.dtype)
        if _format_of(x.dtype) is not None and self.contains(_format_of(x.dtype)):
            return _convert(x, self.storage_dtype)  # every value fits: exact conversion
        value = round_in(_convert(x, work), self, subnormals=subnormals, key=key)
        return _convert(value, self.storage_dtype)

    def _work_dtype(self, dtype: np.dtype) -> np.dtype:
        """The dtype rounding is computed in: float64 for emulated formats and float64 inputs,
        else float32 (which holds bf16 and fp16 exactly)."""
        if not self.is_native or self.native_dtype == np.float64:
            require_x64(f"format {self.name}")
            return np.dtype(np.float64)
        if dtype == np.float64:
            return np.dtype(np.float64)
        return np.dtype(np.float32)


FP64 = Format("fp64", 11, 52, np.dtype(np.float64))
FP32 = Format("fp32", 8, 23, np.dtype(np.float32))
BF16 = Format("bf16", 8, 7, np.dtype(jnp.bfloat16))
FP16 = Format("fp16", 5, 10, np.dtype(np.float16))


_NATIVE = {f.name: f for f in (FP64, FP32, BF16, FP16)}
_ALIASES = {
    "float64": "fp64",
    "f64": "fp64",
    "double": "fp64",
    "float32": "fp32",
    "f32": "fp32",
    "float16": "fp16",
    "f16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}
_EXMY = re.compile(r"^e(\d+)m(\d+)$")
_FORMAT_HELP = (
    "valid formats: fp64, fp32, bf16, fp16 (aliases float64, f64, float32, f32, float16, f16, "
    "half, bfloat16) or eXmY with exponent bits X in 2..11 and mantissa bits Y in 0..52 "
    "(e.g. e5m10, e8m3), or a block format: mxfp8e4m3, mxfp8e5m2, mxfp6e3m2, mxfp6e2m3, mxfp4, "
    "mxint8 (options block=, axis=, scale=floor|ceil|even), fp8e4m3, fp8e5m2 (per-tensor "
    "scale), bnb8, int8, ao4 (options block=, signed=auto|true|false)"
)


def parse_format(text: str | Format | BlockFormat) -> Format | BlockFormat:
    """Parse a format name: a native name or alias, ``eXmY`` (emulated), or a block format.

    Block formats (:mod:`optimorph.precision.block`) are the MX formats (``mxfp8e4m3``,
    ``mxfp8e5m2``, ``mxfp6e3m2``, ``mxfp6e2m3``, ``mxfp4``, ``mxint8``), per-tensor scaled FP8
    (``fp8e4m3``, ``fp8e5m2``) and blockwise code maps (``bnb8``, ``int8``, ``ao4``), with options
    in parentheses: ``mxfp4(axis=0,scale=ceil)``, ``bnb8(block=2048)``.

    ``e11m52`` and ``e8m23`` are canonicalised to fp64 and fp32 (emulating them in float64 is
    exact). ``e5m10`` and ``e8m7`` stay emulated: they have the fp16/bf16 layout but are computed
    in float64, which is what lets the tests check emulation against the native formats.

    >>> parse_format("half").name, parse_format("e8m23").name, parse_format("e8m7").is_native
    ('fp16', 'fp32', False)
    """
    from optimorph.precision.block import BlockFormat, parse_block_format  # block imports us

    if isinstance(text, (Format, BlockFormat)):
        return text
    if not isinstance(text, str):
        raise ValueError(f"format must be a string, got {text!r}; {_FORMAT_HELP}")
    name = text.strip().lower()
    name = _ALIASES.get(name, name)
    if name in _NATIVE:
        return _NATIVE[name]
    match = _EXMY.match(name)
    if match:
        exponent_bits, mantissa_bits = int(match[1]), int(match[2])
        if 2 <= exponent_bits <= 11 and 0 <= mantissa_bits <= 52:
            if (exponent_bits, mantissa_bits) == (11, 52):
                return FP64
            if (exponent_bits, mantissa_bits) == (8, 23):
                return FP32
            return Format(name, exponent_bits, mantissa_bits)
    block = parse_block_format(name)
    if block is not None:
        return block
    raise ValueError(f"unknown format {text!r}; {_FORMAT_HELP}")


_BY_DTYPE = {f.native_dtype: f for f in _NATIVE.values()}


def _format_of(dtype: np.dtype) -> Format | None:
    """The native format of a float dtype, None for non-float dtypes."""
    return _BY_DTYPE.get(np.dtype(dtype))

