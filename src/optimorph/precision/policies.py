"""Per-role mixed-precision policies: which format each value of a training step is stored in.

A :class:`Precision` policy gives a format to each role of a training step (params, grads,
optimizer-state slots, the update, the step counter, hyperparameters) and says how to round;
build it from a spec string with :func:`precision`, e.g.
``precision("bf16,nu=fp32,rounding=stochastic")`` or
``precision("fp32,m=mxfp8e4m3,v=bnb8(block=256)")``. Params, grads, state, each slot and the
update take any format, block-scaled ones included; count and hparams (scalars) take the scalar
formats only. :func:`state_bytes_per_param` states what a policy's optimizer state costs in memory.
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

from optimorph.precision.block import BlockFormat
from optimorph.precision.products import QuantizedProducts, check_product_format
from optimorph.precision.formats import (
    BF16,
    FP16,
    FP32,
    FP64,
    ROUNDINGS,
    SUBNORMALS,
    Format,
    _check_choice,
    _format_of,
    parse_format,
    require_x64,
)
from optimorph.precision.rounding import (
    _convert,
    add_float32,
    round_in,
    round_to_bits,
    stalled_fraction,
)

Array = jax.Array
PyTree = Any


class PrecisionWarning(UserWarning):
    """A value changes qualitatively when stored in a policy's format (e.g. b2=0.999 -> 1.0)."""



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


# ---------------------------------------------------------------------------------------------
# Policies

_ROLES = ("params", "grads", "state", "updates", "forward", "backward", "count", "hparams")
_OPTIONS = ("rounding", "subnormals", "kahan")
_SPEC_HELP = (
    "a spec is comma-separated items: a bare FORMAT (default for params, grads and state), "
    "ROLE=FORMAT with ROLE in params, grads, state, updates, forward, backward, hparams, count "
    "(count also takes 'exact'), "
    "rounding=nearest|stochastic, subnormals=gradual|flush, kahan=true|false, or SLOT=FORMAT "
    "for an optimizer-state field such as mu, nu, v, trace; params, grads, state, updates and "
    "slots also take block formats such as mxfp8e4m3, mxfp4(axis=0), "
    "mxfp4(rounding=stochastic,transform=rht), fp8e4m3, bnb8(block=256), int8, ao4; forward and "
    "backward (the operands of the forward or backward pass's matrix products) take MX or "
    "scalar formats"
)


@dataclasses.dataclass(frozen=True)
class Precision:
    """A mixed-precision policy: one format per role of a training step, and how to round.

    Roles: ``params``; ``grads`` (the gradient as computed; default = params); ``state`` (every
    optimizer-state slot; default = params); ``slots`` (per-slot overrides keyed by the state
    field name, e.g. ``{"nu": FP32}``); ``updates`` (the optimizer's update u, rounded before
    x + u is formed; default None: not rounded, u stays in the compute dtype); ``backward``
    (the operands of the backward pass's matrix products, quantized along their reduction
    dimension: :mod:`optimorph.precision.products`; default None: plain products) and
    ``forward`` (the same for the forward pass's products, weights and activations, with a
    straight-through gradient); ``count`` (None =
    exact int32 counter, else the counter is rounded through this format after each step: bf16
    stalls at 256); ``hparams`` (the format
    hyperparameters are stored in; default = the compute format).

    Arithmetic runs in :attr:`compute_dtype`: float64 if any role is emulated, else the
    narrowest native dtype holding params, grads, state, slots and hparams exactly. Every
    stored value is rounded to its role's format after each step: ``rounding`` 'nearest' or
    'stochastic', ``subnormals`` 'gradual' or 'flush', and ``kahan`` for a compensated
    parameter update. An MX format may fix its own rounding (``mxfp4(rounding=stochastic)``)
    or draw random signs (``transform=rht``); the policy then passes its keys to that role
    only (:attr:`keyed`), and the other roles round as ``rounding`` says.

    Build one with :func:`precision`; ``str(policy)`` is its canonical spec.

    >>> p = precision("bf16,nu=fp32")
    >>> str(p), p.compute_dtype
    ('bf16,nu=fp32', dtype('float32'))
    """

    params: Format | BlockFormat = FP32
    grads: Format | BlockFormat | None = None
    state: Format | BlockFormat | None = None
    slots: Mapping[str, Format | BlockFormat] = dataclasses.field(default_factory=dict)
    updates: Format | BlockFormat | None = None
    forward: Format | BlockFormat | None = None
    backward: Format | BlockFormat | None = None
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
            if fmt is not None and not isinstance(fmt, (Format, BlockFormat)):
                raise ValueError(f"{name} must be a Format (see parse_format), got {fmt!r}")
            if name in ("count", "hparams") and isinstance(fmt, BlockFormat):
                raise ValueError(
                    f"{name} holds scalars and takes a scalar format (fp64, fp32, bf16, fp16, "
                    f"eXmY), not the block format {fmt.name}"
                )
        for role in ("forward", "backward"):
            if getattr(self, role) is not None:
                check_product_format(role, getattr(self, role))
        if self.kahan and isinstance(self.params, BlockFormat):
            raise ValueError(
                f"kahan=true needs a scalar params format; {self.params.name} is a block format"
            )
        if isinstance(self.params, BlockFormat) and self.params.keyed("nearest"):
            raise ValueError(
                f"params={self.params.name}: the initial parameters are rounded without a key, "
                "so a params format takes no rounding=stochastic or transform=rht; set "
                "rounding=stochastic for the whole policy instead"
            )
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
        roles += [self.updates] if self.updates is not None else []
        roles = [f.container if isinstance(f, BlockFormat) else f for f in roles]
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
    def keyed(self) -> bool:
        """Whether a step draws random numbers: ``rounding=stochastic``, or a role's format
        that rounds stochastically or transforms randomly by itself (then only that role gets
        keys). A keyed policy's step needs the run's rounding key."""
        if self.rounding == "stochastic":
            return True
        roles = [self.grads, self.state, self.updates, self.forward, self.backward,
                 *self.slots.values()]  # fmt: skip
        return any(isinstance(f, BlockFormat) and f.keyed(self.rounding) for f in roles)

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
        if self.updates is not None:
            items.append(f"updates={self.updates.name}")
        for role in ("forward", "backward"):
            if getattr(self, role) is not None:
                items.append(f"{role}={getattr(self, role).name}")
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
        return self._round_tree(tree, self.grads, key)

    def round_updates(self, tree: PyTree, key: Array | None = None) -> PyTree:
        """Round float leaves of the optimizer's update to the updates format; unchanged when
        the policy has no updates role."""
        return tree if self.updates is None else self._round_tree(tree, self.updates, key)

    def products(self, key: Array | None = None) -> QuantizedProducts | None:
        """The matrix product the models use while a gradient is computed (None without a
        ``forward`` or ``backward`` role); ``key`` (the step's products key) is used where a
        format draws random numbers under this policy."""
        if self.forward is None and self.backward is None:
            return None
        fmts, random = [], False
        for fmt in (self.forward, self.backward):
            if isinstance(fmt, BlockFormat):
                fmt = fmt.under(self.rounding)
                random |= fmt.keyed(self.rounding)
            elif fmt is not None:
                random |= self.rounding == "stochastic"
            fmts.append(fmt)
        return QuantizedProducts(*fmts, key if random else None)

    def _round_tree(self, tree: PyTree, fmt: Format | BlockFormat, key: Array | None) -> PyTree:
        keys = self._leaf_keys(key, tree)
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        out = [self._round(x, fmt, k) for x, k in zip(leaves, keys, strict=True)]
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
                out.append(self._round(leaf, self.state_format(path), k))
        return jax.tree_util.tree_unflatten(treedef, out)

    def state_format(self, path: tuple) -> Format | BlockFormat:
        """The format of the optimizer-state leaf at ``path`` (a ``tree_flatten_with_path``
        path): its slot's override, else ``state``. A code map with ``signed=auto`` is resolved
        by the outermost field name on the path (unsigned for ``v``, ``nu``, ``sum_sq``)."""
        fmt = self.slots.get(self._role(path), self.state)
        if isinstance(fmt, BlockFormat):
            names = [e.name for e in path if isinstance(e, jax.tree_util.GetAttrKey)]
            fmt = fmt.for_slot(names[0] if names else None)
        return fmt

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
        its rounding. fp32 params with float32 updates under x64 take
        :func:`~optimorph.precision.rounding.add_float32` instead: the same bits, in float32.

        Kahan: y = u + c; new = fl(p + y); c = y - (new - p), so the part of the update that
        rounding dropped is carried to the next step instead of lost. Kahan runs in
        compute_dtype widened to float32 at least (XLA may skip bf16 roundings inside a fused
        computation); stochastic rounding rounds the sum formed in float64 under x64 (it needs
        the exact sum: an fp32 sum would already be rounded to nearest), else in float32.

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
            if perturb is None and self._sums_in_float32(params, updates):
                return jax.tree_util.tree_map(add_float32, params, updates), None
            wide = _format_of(np.dtype(jnp.result_type(float)))
            total = jax.tree_util.tree_map(
                lambda p, u: wide.round(p) + wide.round(u), params, updates
            )
            if perturb is not None:
                total = perturb(total)
            return self.cast_params(total), None
        if perturb is not None:
            raise ValueError("noise replicas need rounding=nearest without kahan")
        stochastic = self.rounding == "stochastic"  # keys of other roles are not the params'
        work = _format_of(np.promote_types(self.compute_dtype, np.float32))
        if stochastic and jax.config.jax_enable_x64:
            # Stochastic rounding needs the exact sum: formed in float32, fp32 params would be
            # rounded to nearest by the addition itself and the random draw would change nothing.
            work = _format_of(np.dtype(np.float64))
        p_leaves, treedef = jax.tree_util.tree_flatten(params)
        u_leaves = treedef.flatten_up_to(updates)
        c_leaves = treedef.flatten_up_to(compensation) if self.kahan else [None] * len(p_leaves)
        keys = self._leaf_keys(key, p_leaves) if stochastic else [None] * len(p_leaves)
        new_p, new_c = [], []
        for p, u, c, k in zip(p_leaves, u_leaves, c_leaves, keys, strict=True):
            p_w, y = work.round(p), work.round(u)
            if c is not None:
                y = y + work.round(c)
            if isinstance(self.params, BlockFormat):  # kahan is refused for block params
                new_p.append(self.params.round(p_w + y, subnormals=self.subnormals, key=k))
                continue
            new_w = round_in(p_w + y, self.params, subnormals=self.subnormals, key=k)
            new_p.append(_convert(new_w, self.params.storage_dtype))
            if c is not None:
                new_c.append(self.params.round(y - (new_w - p_w), subnormals=self.subnormals))
        params_out = jax.tree_util.tree_unflatten(treedef, new_p)
        return params_out, jax.tree_util.tree_unflatten(treedef, new_c) if self.kahan else None

    stalled = staticmethod(lambda old, updates, new: stalled_fraction(old, updates, new))

    def _sums_in_float32(self, params: PyTree, updates: PyTree) -> bool:
        """Whether fp32 params take float32 updates under x64: then :func:`add_float32` gives
        the rounded sum's bits without going through float64 (without x64 the sum is a native
        float32 add, flushed, as it always was)."""
        leaves = jax.tree_util.tree_leaves((params, updates))
        return (
            jax.config.jax_enable_x64
            and self.params == FP32
            and self.subnormals == "gradual"
            and all(jnp.result_type(x) == np.float32 for x in leaves)
        )

    # -- helpers -----------------------------------------------------------------------------

    def _round(self, x: Any, fmt: Format | BlockFormat, key: Array | None) -> Any:
        """``x`` rounded to ``fmt``; the key is used only where ``fmt`` draws random numbers
        under this policy (a keyed policy hands keys to every leaf)."""
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return x
        if isinstance(fmt, BlockFormat):
            fmt = fmt.under(self.rounding)
            random = fmt.keyed(self.rounding)
        else:
            random = self.rounding == "stochastic"
        return fmt.round(x, subnormals=self.subnormals, key=key if random else None)

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
        """One key per leaf (fold_in by leaf index) when the policy is :attr:`keyed`, else None."""
        n = len(jax.tree_util.tree_leaves(tree))
        if not self.keyed:
            return [None] * n
        if key is None:
            raise ValueError(
                f"precision {self.name!r} rounds stochastically (rounding=stochastic, or a "
                "format's rounding=stochastic / transform=rht) and needs a PRNG key "
                "(key=jax.random.key(seed))"
            )
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


def _split_items(text: str) -> list[str]:
    """Split a spec at the commas outside parentheses: ``fp32,v=bnb8(block=256,signed=true)``."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ValueError(f"unbalanced ')' in precision spec {text!r}; {_SPEC_HELP}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '(' in precision spec {text!r}; {_SPEC_HELP}")
    return [*items, text[start:]]


def _parse_spec(text: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"slots": {}}
    for item in (part.strip() for part in _split_items(text)):
        if "=" not in item.partition("(")[0]:  # a bare FORMAT, options included: mxfp4(block=16)
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


def _format_arg(value: Any) -> Format | BlockFormat:
    try:
        return parse_format(value)
    except ValueError as error:
        raise ValueError(f"{error}. In a precision spec: {_SPEC_HELP}") from None


def _map_floats(fn, tree: PyTree) -> PyTree:
    """Apply ``fn`` to float leaves; leave other leaves (ints, bools) untouched."""
    return jax.tree_util.tree_map(
        lambda x: fn(x) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
    )



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

    def round_updates(self, tree: PyTree, key: Array | None = None) -> PyTree:
        return tree  # no updates role: u stays as computed

    @property
    def keyed(self) -> bool:
        return self.rounding == "stochastic"

    def round_hparam(self, x: Any) -> Array:
        return jnp.asarray(x, jnp.float64)

    def products(self, key: Array | None = None) -> None:
        return None  # no forward or backward role: the models' products stay plain

    def apply_updates(self, params, updates, compensation=None, key=None, perturb=None):
        """fl(p + u): summed in float64, perturbed (noise replicas), rounded once."""
        total = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        return self._round(perturb(total) if perturb is not None else total), None




def storage_bits(fmt: Format | BlockFormat, shape: tuple[int, ...]) -> int:
    """Bits a tensor of ``shape`` takes in ``fmt``: 1 + e + m per element for scalar formats
    (an emulated ``eXmY`` counted at the width hardware would store it in, not its float64
    emulation), elements plus scales for block formats.

    >>> storage_bits(BF16, (10, 3)), storage_bits(parse_format("mxfp4"), (64,))
    (480, 272)
    """
    if isinstance(fmt, BlockFormat):
        return fmt.storage_bits(tuple(shape))
    return math.prod(shape) * (1 + fmt.exponent_bits + fmt.mantissa_bits)


def state_bytes_per_param(policy: Any, optimizer_or_state: Any, params: PyTree) -> float:
    """Bytes of optimizer state per parameter under ``policy``: the memory number of a run.

    Every float leaf of the state is counted in the format its role gives it
    (:meth:`Precision.state_format`), block formats with their scales and padded blocks
    (:func:`storage_bits`); integer leaves (the step counter) are not counted. Divided by the
    number of float parameters. fp32 Adam is 8; bitsandbytes-style 8-bit Adam 2 + 2 * 4 / 256;
    torchao-style 4-bit Adam 1 + 2 * 4 / 128.

    Args:
      policy: a :class:`Precision` or a spec string.
      optimizer_or_state: an optax ``GradientTransformation`` (its state is shaped with
        ``jax.eval_shape``, nothing is computed) or a state pytree (arrays or shape structs).
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
      Bytes per parameter, a float; 0.0 for a stateless optimizer.

    >>> import jax.numpy as jnp, optax
    >>> params = {"w": jnp.zeros((1000, 256))}
    >>> state_bytes_per_param("fp32", optax.adam(1e-3), params)
    8.0
    >>> state_bytes_per_param("fp32,mu=bnb8,nu=bnb8", optax.adam(1e-3), params)
    2.03125
    >>> state_bytes_per_param("fp32,state=ao4", optax.adam(1e-3), params)
    1.0625
    """
    policy = precision(policy)
    state = optimizer_or_state
    if hasattr(optimizer_or_state, "init") and callable(optimizer_or_state.init):
        state = jax.eval_shape(optimizer_or_state.init, params)
    n_params = sum(
        math.prod(np.shape(leaf))
        for leaf in jax.tree_util.tree_leaves(params)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    )
    bits = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            bits += storage_bits(policy.state_format(path), tuple(np.shape(leaf)))
    return bits / 8 / n_params if n_params else 0.0
