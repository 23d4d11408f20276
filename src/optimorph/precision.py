"""Precision as an input: number formats, rounding, and per-role mixed-precision policies.

A :class:`Format` is an IEEE-like binary format with ``exponent_bits`` and ``mantissa_bits``
(explicit bits; the top exponent is reserved for inf/NaN, so ``e4m3`` is not OCP's ``E4M3FN``).
The four native formats (fp64, fp32, bf16, fp16) are stored in their own dtype; every other
``eXmY`` format is *emulated*: computed in float64 and rounded with ``lax.reduce_precision``.

Rounding rules (``u = 2**-(mantissa_bits + 1)`` is the unit roundoff):

* nearest: round to nearest, ties to even; overflow gives +-inf, NaN stays NaN, -0.0 stays -0.0.
* gradual underflow (default): below the smallest normal, round to the nearest multiple of the
  smallest subnormal, as IEEE formats do. ``reduce_precision`` on CPU flushes that range to zero,
  so it is emulated here; ``subnormals='flush'`` gives the flush-to-zero behaviour instead.
* stochastic: round ``|x|`` down to the grid spacing ``q`` and up with probability
  ``(|x| - lo) / q``, so the result is unbiased in expectation.

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

A :class:`Precision` policy gives a format to each role of a training step (params, grads,
optimizer-state slots, the step counter, hyperparameters) and says how to round; build it from a
spec string with :func:`precision`, e.g. ``precision("bf16,nu=fp32,rounding=stochastic")``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "BF16",
    "FP16",
    "FP32",
    "FP64",
    "Format",
    "Precision",
    "PrecisionWarning",
    "parse_format",
    "precision",
    "require_x64",
    "round_in",
    "round_to_bits",
    "stalled_fraction",
    "TracedBits",
]

Array = jax.Array
PyTree = Any

ROUNDINGS = ("nearest", "stochastic")
SUBNORMALS = ("gradual", "flush")


class PrecisionWarning(UserWarning):
    """A value changes qualitatively when stored in a policy's format (e.g. b2=0.999 -> 1.0)."""


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


def _nearest_held(fmt: Format, value: float, stored: float) -> float | None:
    """The value of ``fmt`` nearest to ``value`` that stores it faithfully, where ``stored``
    broke it: next to +-1 on value's side, the smallest normal number, or the largest finite one.
    """
    if abs(stored) == 1.0 and abs(value) != 1.0:
        step = 2.0 ** -(fmt.mantissa_bits + 1) if abs(value) < 1 else -(2.0**-fmt.mantissa_bits)
        return math.copysign(1.0 - step, value)
    if abs(value) < fmt.smallest_normal:
        return math.copysign(fmt.smallest_normal, value)
    if abs(value) > fmt.max_value or not math.isfinite(stored):
        return math.copysign(fmt.max_value, value)
    return None


def _decimal_toward(target: float, up: bool, stored: Callable[[float], float]) -> float:
    """The shortest decimal on the far side of ``target`` (above if ``up``) that ``stored``
    maps to ``target``: 0.99609375 in bf16 is 0.996."""
    import decimal

    exact = decimal.Decimal(target)
    direction = decimal.ROUND_CEILING if up else decimal.ROUND_FLOOR
    for digits in range(1, 18):
        quantum = decimal.Decimal(1).scaleb(exact.adjusted() - digits + 1)
        candidate = float(exact.quantize(quantum, rounding=direction))
        if stored(candidate) == target:
            return candidate
    return target

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
    "(e.g. e5m10, e8m3)"
)


def parse_format(text: str | Format) -> Format:
    """Parse a format name: a native name or alias, or ``eXmY`` (emulated).

    ``e11m52`` and ``e8m23`` are canonicalised to fp64 and fp32 (emulating them in float64 is
    exact). ``e5m10`` and ``e8m7`` stay emulated: they have the fp16/bf16 layout but are computed
    in float64, which is what lets the tests check emulation against the native formats.

    >>> parse_format("half").name, parse_format("e8m23").name, parse_format("e8m7").is_native
    ('fp16', 'fp32', False)
    """
    if isinstance(text, Format):
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
    raise ValueError(f"unknown format {text!r}; {_FORMAT_HELP}")


_BY_DTYPE = {f.native_dtype: f for f in _NATIVE.values()}


def _format_of(dtype: np.dtype) -> Format | None:
    """The native format of a float dtype, None for non-float dtypes."""
    return _BY_DTYPE.get(np.dtype(dtype))


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
    rand = jax.random.bits(key, x.shape, uint)
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
# Policies

_ROLES = ("params", "grads", "state", "count", "hparams")
_OPTIONS = ("rounding", "subnormals", "kahan")
_SPEC_HELP = (
    "a spec is comma-separated items: a bare FORMAT (default for params, grads and state), "
    "ROLE=FORMAT with ROLE in params, grads, state, hparams, count (count also takes 'exact'), "
    "rounding=nearest|stochastic, subnormals=gradual|flush, kahan=true|false, or SLOT=FORMAT "
    "for an optimizer-state field such as mu, nu, v, trace"
)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A mixed-precision policy: one format per role of a training step, and how to round.

    Roles: ``params``; ``grads`` (the gradient as computed; default = params); ``state`` (every
    optimizer-state slot; default = params); ``slots`` (per-slot overrides keyed by the state
    field name, e.g. ``{"nu": FP32}``); ``count`` (None = exact int32 counter, else the counter is
    rounded through this format after each step: bf16 stalls at 256); ``hparams`` (the format
    hyperparameters are stored in; default = the compute format).

    Arithmetic runs in :attr:`compute_dtype`: float64 if any role is emulated, else the
    narrowest native dtype holding params, grads, state, slots and hparams exactly. Every
    stored value is rounded to its role's format after each step: ``rounding`` 'nearest' or
    'stochastic', ``subnormals`` 'gradual' or 'flush', and ``kahan`` for a compensated
    parameter update.

    Build one with :func:`precision`; ``str(policy)`` is its canonical spec.

    >>> p = precision("bf16,nu=fp32")
    >>> str(p), p.compute_dtype
    ('bf16,nu=fp32', dtype('float32'))
    """

    params: Format = FP32
    grads: Format | None = None
    state: Format | None = None
    slots: Mapping[str, Format] = dataclasses.field(default_factory=dict)
    count: Format | None = None
    hparams: Format | None = None
    rounding: str = "nearest"
    subnormals: str = "gradual"
    kahan: bool = False

    def __post_init__(self) -> None:
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("subnormals", self.subnormals, SUBNORMALS)
        if not isinstance(self.kahan, bool):
            raise ValueError(f"kahan must be True or False, got {self.kahan!r}")
        for name, fmt in [(r, getattr(self, r)) for r in _ROLES] + list(self.slots.items()):
            if fmt is not None and not isinstance(fmt, Format):
                raise ValueError(f"{name} must be a Format (see parse_format), got {fmt!r}")
        set_ = object.__setattr__  # frozen: resolve defaults once, here
        set_(self, "slots", dict(sorted(self.slots.items())))
        set_(self, "grads", self.grads or self.params)
        set_(self, "state", self.state or self.params)
        if self.hparams is None:
            set_(self, "hparams", _format_of(self._compute_dtype(include_hparams=False)))

    def __hash__(self) -> int:
        fields = tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "slots")
        return hash((fields, tuple(self.slots.items())))

    # -- derived properties ------------------------------------------------------------------

    @property
    def compute_dtype(self) -> np.dtype:
        """float64 if any role is emulated, else the narrowest native dtype holding every
        float role exactly (params=bf16, state=fp32 -> float32; fp16 with bf16 -> float32)."""
        return self._compute_dtype(include_hparams=True)

    def _compute_dtype(self, include_hparams: bool) -> np.dtype:
        roles = [self.params, self.grads, self.state, *self.slots.values()]
        if include_hparams:
            roles.append(self.hparams)
        if any(not f.is_native for f in [*roles, self.count] if f is not None):
            return np.dtype(np.float64)
        for candidate in (FP16, BF16, FP32, FP64):
            if all(candidate.contains(f) for f in roles):
                return candidate.native_dtype
        raise AssertionError("unreachable: fp64 contains every format")

    @property
    def unit_roundoff(self) -> float:
        """The unit roundoff of the params format."""
        return self.params.unit_roundoff

    @property
    def name(self) -> str:
        """The canonical spec: ``precision(p.name) == p``."""
        items = [self.params.name]
        items += [
            f"{r}={getattr(self, r).name}"
            for r in ("grads", "state")
            if getattr(self, r) != self.params
        ]
        items += [f"{slot}={fmt.name}" for slot, fmt in self.slots.items()]
        if self.count is not None:
            items.append(f"count={self.count.name}")
        if self.hparams != _format_of(self._compute_dtype(include_hparams=False)):
            items.append(f"hparams={self.hparams.name}")
        if self.rounding != "nearest":
            items.append(f"rounding={self.rounding}")
        if self.subnormals != "gradual":
            items.append(f"subnormals={self.subnormals}")
        if self.kahan:
            items.append("kahan=true")
        return ",".join(items)

    def __str__(self) -> str:
        return self.name

    # -- rounding of pytrees -----------------------------------------------------------------

    def cast_params(self, tree: PyTree) -> PyTree:
        """Round every float leaf to the params format (nearest), in its storage dtype."""
        return _map_floats(lambda x: self.params.round(x, subnormals=self.subnormals), tree)

    def to_compute(self, tree: PyTree) -> PyTree:
        """Cast float leaves to :attr:`compute_dtype` (rounding if narrower); ints untouched."""
        fmt = _format_of(self.compute_dtype)
        return _map_floats(lambda x: fmt.round(x, subnormals=self.subnormals), tree)

    def round_grads(self, tree: PyTree, key: Array | None = None) -> PyTree:
        """Round float leaves to the grads format (stochastically when the policy says so)."""
        keys = self._leaf_keys(key, tree)
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        out = [self._round(x, self.grads, k) for x, k in zip(leaves, keys, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, out)

    def round_state(self, state: PyTree, key: Array | None = None) -> PyTree:
        """Round an optax state pytree, each leaf to the format of its role.

        The role of a leaf is the outermost NamedTuple attribute on its path whose name the
        policy knows ('count' or a key of ``slots``); outermost, so that params stored as
        NamedTuples inside a slot (``mu.w``) do not hide the slot name, and wrappers
        (``inner_state``) are looked through. Caveat: a params field named like an overridden
        slot (``m.v`` with a ``v`` override) takes that slot's format. An integer ``count``
        goes through the count role (exact, or rounded through ``count``'s format, saturating
        at int32 max); other float leaves are rounded to ``slots.get(name, state)`` in its
        storage dtype; other integer leaves are untouched.
        """
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        keys = self._leaf_keys(key, [leaf for _, leaf in paths_leaves])
        out = []
        for (path, leaf), k in zip(paths_leaves, keys, strict=True):
            role = self._role(path)
            if role == "count" and jnp.issubdtype(jnp.result_type(leaf), jnp.integer):
                out.append(self._round_count(leaf))
            else:
                out.append(self._round(leaf, self.slots.get(role, self.state), k))
        return jax.tree_util.tree_unflatten(treedef, out)

    def round_hparam(self, x: Any) -> Array:
        """Round a hyperparameter to the hparams format; the result is in compute_dtype."""
        fmt = _format_of(self.compute_dtype)
        return fmt.round(self.hparams.round(x, subnormals=self.subnormals))

    def check_hparams(self, hparams: Mapping[str, Any]) -> list[str]:
        """Messages for hyperparameters that storage in the hparams format breaks.

        A concrete float v stored as s is reported when s != v and either the error exceeds
        the format's unit roundoff (|s - v| > u |v|: underflow, loss in the subnormal range,
        overflow) or s is +-1 (a beta rounded to 1 makes 1 - beta zero). Ordinary rounding,
        like 0.9 in fp32, is not reported.

        >>> precision("bf16").check_hparams({"b1": 0.9, "b2": 0.999})
        ['b2=0.999 is stored as 1.0 in bf16']
        """
        return [
            f"{name}={value!r} is stored as {stored!r} in {self.hparams}"
            for name, value, stored in self._broken_hparams(hparams)
        ]

    def hparams_fix(self, name: str, value: float) -> str:
        """How to keep hyperparameter ``name=value`` intact: a wider hparams format (when one
        holds it), or the nearest value on its side that this format holds ('' if it is kept).

        The value is the nearest stored value that is not the broken one (the largest below 1
        for a beta stored as 1, the smallest normal number for an underflow, the largest
        finite number for an overflow), written with the fewest digits that still round to it.

        >>> print(precision("bf16").hparams_fix("b2", 0.999))
        keep hyperparameters wide with `hparams=fp32` (e.g. --precision 'bf16,hparams=fp32'),
        or choose b2 <= 0.996
        >>> print(precision("fp16").hparams_fix("eps", 1e-8))
        keep hyperparameters wide with `hparams=fp32` (e.g. --precision 'fp16,hparams=fp32'),
        or choose eps >= 6.104e-05
        """
        broken = self._broken_hparams({name: value})
        if not broken:
            return ""
        fixes = []
        widths = (FP32, FP64) if jax.config.jax_enable_x64 else (FP32,)
        wide = next((f for f in widths if not self.hparams.contains(f)), None)
        if wide is not None:
            wider = dataclasses.replace(self, hparams=wide)
            if not wider._broken_hparams({name: value}):
                fixes.append(
                    f"keep hyperparameters wide with `hparams={wide.name}` "
                    f"(e.g. --precision '{wider.name}')"
                )
        target = _nearest_held(self.hparams, float(value), broken[0][2])
        if target is not None:
            up = target > value
            held = _decimal_toward(target, up, lambda x: self._stored_hparam(x))
            fixes.append(f"choose {name} {'>=' if up else '<='} {held!r}")
        return ", or ".join(fixes)

    def warn_hparams(self, hparams: Mapping[str, Any]) -> list[str]:
        """:meth:`check_hparams` with each message's fix (:meth:`hparams_fix`), each emitted as
        a :class:`PrecisionWarning`; returns those messages."""
        messages = []
        for name, value, stored in self._broken_hparams(hparams):
            fact = f"{name}={value!r} is stored as {stored!r} in {self.hparams}"
            fix = self.hparams_fix(name, value)
            messages.append(f"{fact}: {fix}" if fix else fact)
        for message in messages:
            warnings.warn(message, PrecisionWarning, stacklevel=2)
        return messages

    def _stored_hparam(self, value: float) -> float:
        return float(np.asarray(self.hparams.round(value)).astype(np.float64))

    def _broken_hparams(self, hparams: Mapping[str, Any]) -> list[tuple[str, float, float]]:
        """``(name, value, stored)`` for each hyperparameter :meth:`check_hparams` reports."""
        out = []
        for name, value in hparams.items():
            if isinstance(value, bool) or not isinstance(value, (float, np.floating)):
                continue
            stored = self._stored_hparam(value)
            error = abs(stored - float(value))
            if stored != value and (
                error > self.hparams.unit_roundoff * abs(value) or abs(stored) == 1.0
            ):
                out.append((name, value, stored))
        return out

    def check_slots(self, state: PyTree, owner: str) -> None:
        """Raise ValueError unless every slot override (and a ``count`` format) names a field of
        this optimizer state; ``owner`` names the optimizer in the message.

        A misspelled slot would otherwise be ignored silently while the run's config records it.

        >>> import jax.numpy as jnp, optax
        >>> precision("bf16,nu=fp32").check_slots(optax.adam(1e-3).init(jnp.ones(2)), "adam")
        >>> precision("bf16,v=fp32").check_slots(optax.adam(1e-3).init(jnp.ones(2)), "adam")
        Traceback (most recent call last):
        ValueError: precision 'bf16,v=fp32': adam has no state slot 'v'; its slots are count, mu, nu
        """
        fields = sorted(
            {
                entry.name
                for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]
                for entry in path
                if isinstance(entry, jax.tree_util.GetAttrKey)
            }
        )
        wanted = list(self.slots) + (["count"] if self.count is not None else [])
        unknown = [name for name in wanted if name not in fields]
        if unknown:
            have = ", ".join(fields) if fields else "none (a stateless optimizer)"
            raise ValueError(
                f"precision {self.name!r}: {owner} has no state slot "
                f"{', '.join(map(repr, unknown))}; its slots are {have}"
                + ("" if fields else "; drop the slot override")
            )

    # -- the parameter update ----------------------------------------------------------------

    def init_compensation(self, params: PyTree) -> PyTree:
        """Zeros shaped like ``params`` in the params storage dtype (Kahan's running error)."""
        dtype = self.params.storage_dtype
        return jax.tree_util.tree_map(lambda p: jnp.zeros(jnp.shape(p), dtype), params)

    def apply_updates(
        self,
        params: PyTree,
        updates: PyTree,
        compensation: PyTree | None = None,
        key: Array | None = None,
        perturb: Callable[[PyTree], PyTree] | None = None,
    ) -> tuple[PyTree, PyTree | None]:
        """new = fl(p + u) in the params format; with ``kahan``, a compensated sum.

        Round to nearest: p + u is formed in the widest float dtype available (float64 under
        x64, else float32), where the sum of two stored values is exact or nearly so, and
        rounded once to the params format, so the result is the correctly rounded sum whether
        or not noise replicas are on. ``perturb`` (noise replicas) acts on that wide sum, before
        its rounding.

        Kahan: y = u + c; new = fl(p + y); c = y - (new - p), so the part of the update that
        rounding dropped is carried to the next step instead of lost. Kahan and stochastic
        rounding run in compute_dtype widened to float32 at least (they need the exact sum, and
        XLA may skip bf16 roundings inside a fused computation).

        Args:
          params: params pytree in the params storage dtype.
          updates: same structure, any float dtype.
          compensation: Kahan's c (from :meth:`init_compensation`); required iff ``kahan``.
          key: PRNG key, required iff ``rounding='stochastic'``; split per leaf.
          perturb: a function of the wide sum's pytree applied before rounding (nearest only).

        Returns:
          (new params in the params storage dtype, new compensation or None).
        """
        if self.kahan and compensation is None:
            raise ValueError("kahan=True needs a compensation pytree: use init_compensation()")
        if self.rounding == "nearest" and not self.kahan:
            wide = _format_of(np.dtype(jnp.result_type(float)))
            total = jax.tree_util.tree_map(
                lambda p, u: wide.round(p) + wide.round(u), params, updates
            )
            if perturb is not None:
                total = perturb(total)
            return self.cast_params(total), None
        if perturb is not None:
            raise ValueError("noise replicas need rounding=nearest without kahan")
        work = _format_of(np.promote_types(self.compute_dtype, np.float32))
        p_leaves, treedef = jax.tree_util.tree_flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        c_leaves = treedef.flatten_up_to(compensation) if self.kahan else [None] * len(p_leaves)
        keys = self._leaf_keys(key, p_leaves)
        new_p, new_c = [], []
        for p, u, c, k in zip(p_leaves, u_leaves, c_leaves, keys, strict=True):
            p_w, y = work.round(p), work.round(u)
            if c is not None:
                y = y + work.round(c)
            new_w = round_in(p_w + y, self.params, subnormals=self.subnormals, key=k)
            new_p.append(_convert(new_w, self.params.storage_dtype))
            if c is not None:
                new_c.append(self.params.round(y - (new_w - p_w), subnormals=self.subnormals))
        params_out = jax.tree_util.tree_unflatten(treedef, new_p)
        return params_out, jax.tree_util.tree_unflatten(treedef, new_c) if self.kahan else None

    stalled = staticmethod(lambda old, updates, new: stalled_fraction(old, updates, new))

    # -- helpers -----------------------------------------------------------------------------

    def _round(self, x: Any, fmt: Format, key: Array | None) -> Any:
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return x
        return fmt.round(x, subnormals=self.subnormals, key=key)

    def _round_count(self, count: Array) -> Array:
        if self.count is None:
            return count
        value = self.count.round(count)  # nearest: a counter has no use for noise
        top = float(np.nextafter(np.float32(2**31), np.float32(0)))  # largest float32 < 2**31
        return jnp.clip(value.astype(jnp.float32), 0, top).astype(count.dtype)

    def _role(self, path: tuple) -> str | None:
        for entry in path:
            if isinstance(entry, jax.tree_util.GetAttrKey) and (
                entry.name == "count" or entry.name in self.slots
            ):
                return entry.name
        return None

    def _leaf_keys(self, key: Array | None, tree: PyTree) -> list[Array | None]:
        """One key per leaf (fold_in by leaf index) when rounding is stochastic, else None."""
        n = len(jax.tree_util.tree_leaves(tree))
        if self.rounding == "nearest":
            return [None] * n
        if key is None:
            raise ValueError("rounding='stochastic' needs a PRNG key (key=jax.random.key(seed))")
        return [jax.random.fold_in(key, i) for i in range(n)]


def precision(spec: str | Precision | None = None, **overrides: Any) -> Precision:
    """Build a :class:`Precision` from a spec string and keyword overrides.

    Spec items, comma-separated: a bare FORMAT sets params, grads and state; ROLE=FORMAT sets
    one role (params, grads, state, hparams, count; ``count=exact`` is the int32 default);
    ``rounding=``, ``subnormals=``, ``kahan=`` set options; any other NAME=FORMAT overrides one
    optimizer-state slot. Keyword overrides use the same names and win over the spec. None
    means 'fp32'; a Precision is returned as is (with overrides applied on top).

    >>> str(precision("params=bf16,state=fp32")), str(precision("fp16", count="bf16"))
    ('bf16,state=fp32', 'fp16,count=bf16')

    Raises:
      ValueError: malformed spec, unknown format or option value (the message lists choices).
      RuntimeError: the policy computes in float64 and jax_enable_x64 is off.
    """
    if isinstance(spec, Precision):
        if not overrides:
            return spec
        spec = spec.name
    if spec is not None and not isinstance(spec, str):
        raise ValueError(
            f"precision spec must be a string or Precision, got {spec!r}; {_SPEC_HELP}"
        )
    settings = _parse_spec(spec) if spec is not None else {"slots": {}}  # None: fp32 everywhere
    for name, value in overrides.items():
        _set(settings, name, value)
    if "default" in settings:  # without one, params is fp32 and grads/state follow params
        default = settings.pop("default")
        for role in ("params", "grads", "state"):
            settings.setdefault(role, default)
    policy = Precision(**settings)
    if policy.compute_dtype == np.float64:
        require_x64(f"precision policy {policy.name!r}")
    return policy


def _parse_spec(text: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"slots": {}}
    for item in (part.strip() for part in text.split(",")):
        if "=" not in item:
            if "default" in settings:
                raise ValueError(f"two bare formats in precision spec {text!r}; {_SPEC_HELP}")
            settings["default"] = _format_arg(item)
            continue
        name, _, value = (s.strip() for s in item.partition("="))
        _set(settings, name, value)
    return settings


def _set(settings: dict[str, Any], name: str, value: Any) -> None:
    """Record one NAME=VALUE item (a role, an option, or a slot override) in ``settings``."""
    if name in ("rounding", "subnormals"):
        _check_choice(name, value, ROUNDINGS if name == "rounding" else SUBNORMALS)
        settings[name] = value
    elif name == "kahan":
        flags = {"true": True, "false": False}
        if not isinstance(value, bool) and str(value).lower() not in flags:
            raise ValueError(f"kahan must be true or false, got {value!r}")
        settings[name] = value if isinstance(value, bool) else flags[str(value).lower()]
    elif name == "count" and (value is None or value == "exact"):
        settings[name] = None
    elif name in _ROLES:
        settings[name] = _format_arg(value)
    elif name == "slots" and isinstance(value, Mapping):
        settings["slots"].update({k: _format_arg(v) for k, v in value.items()})
    elif re.fullmatch(r"[A-Za-z_]\w*", name or ""):
        settings["slots"][name] = _format_arg(value)
    else:
        raise ValueError(f"bad precision item {name!r}={value!r}; {_SPEC_HELP}")


def _format_arg(value: Any) -> Format:
    try:
        return parse_format(value)
    except ValueError as error:
        raise ValueError(f"{error}. In a precision spec: {_SPEC_HELP}") from None


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _map_floats(fn, tree: PyTree) -> PyTree:
    """Apply ``fn`` to float leaves; leave other leaves (ints, bools) untouched."""
    return jax.tree_util.tree_map(
        lambda x: fn(x) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
    )


# ---------------------------------------------------------------------------------------------
# A traced mantissa width (one compiled program for every precision)


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


@dataclasses.dataclass(frozen=True)
class TracedBits:
    """A round-to-nearest policy whose mantissa width is a traced number: ``e11m<bits>``.

    Every role (params, grads, state) is stored in float64 rounded to ``bits`` explicit mantissa
    bits with float64's exponent range; hyperparameters stay at full precision. It has the
    methods the training step (:mod:`optimorph.engine.step`) calls, so the phase diagram runs
    the same step as training with one program serving every mantissa width.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> p = TracedBits(jnp.asarray(10))
    >>> float(p.cast_params(jnp.float64(1 + 2**-11 + 2**-30)))
    1.0009765625
    """

    bits: Any
    rounding: str = "nearest"
    kahan: bool = False

    @property
    def unit_roundoff(self) -> Array:
        return 2.0 ** -(jnp.asarray(self.bits, jnp.float64) + 1)

    def _round(self, tree: PyTree) -> PyTree:
        return _map_floats(lambda x: round_to_bits(jnp.asarray(x, jnp.float64), self.bits), tree)

    def cast_params(self, tree: PyTree) -> PyTree:
        return self._round(tree)

    def to_compute(self, tree: PyTree) -> PyTree:
        return tree

    def round_grads(self, tree: PyTree, key: Array | None = None) -> PyTree:
        return self._round(tree)

    def round_state(self, state: PyTree, key: Array | None = None) -> PyTree:
        return self._round(state)

    def round_hparam(self, x: Any) -> Array:
        return jnp.asarray(x, jnp.float64)

    def apply_updates(self, params, updates, compensation=None, key=None, perturb=None):
        """fl(p + u): summed in float64, perturbed (noise replicas), rounded once."""
        total = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        return self._round(perturb(total) if perturb is not None else total), None


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
