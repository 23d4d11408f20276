"""State maps phi: S_A -> S_B between optimizers, exact (registered) or fitted (DESIGN.md s. 3).

A state is ``(params, optimizer state)``. A :class:`StateMap` sends A's state to B's (``phi``)
and back (``psi``). Every map here keeps the parameters (factor 1) and acts on the optimizer state
*per field*: field ``f_B`` of B is ``s * f_A`` (a scalar) or ``diag(s) f_A`` (a diagonal) of one
field of A, or it is *dropped*: set to zero because the optimizer that owns it overwrites it in
every step before reading it (Adam with b1 = 0 sets m = g), so its value carries no information.

Exact maps are registered per pair of optimizer names with the conditions under which they hold
and a one-line derivation; ``find_map(a, b)`` looks them up (in either direction: a map registered
as A -> B serves B -> A as its inverse). Pairs with no exact map get one fitted by least squares on
visited states (:func:`fit_map`), with its residual reported.

Condition numbers: for a per-field linear map the Jacobian is diagonal with the scales on it, so
kappa(phi) = sigma_max / sigma_min = max|s| / min|s| over the kept fields (params count with 1),
and kappa(psi) is the same number. Dropped fields are excluded: phi is not injective on them, but
no future state depends on their values (the target overwrites them), so they do not amplify or
hide differences; a fitted map that drops a field is reported with ``dropped`` beside kappa.

>>> m = find_map("momentum(beta=0.9, form='pytorch')", "momentum(beta=0.9, form='ema')")
>>> m.scales, round(m.kappa_phi, 12)
({'params': 1.0, 'm': 0.09999999999999998}, 10.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.optimizers.first_order import (
    AdamState,
    HeavyBallState,
    MomentumState,
    RmspropState,
    SgdState,
)

__all__ = [
    "EXACT_MAPS",
    "Slots",
    "StateMap",
    "exact_map",
    "find_map",
    "fit_map",
    "identity_map",
]

PyTree = Any
Phi = Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]
MapBuilder = Callable[[OptimizerSpec, OptimizerSpec], "StateMap | None"]

KINDS = ("exact", "fitted")
FAMILIES = ("scalar", "diagonal")


# ---------------------------------------------------------------------------------------------
# The map


@dataclasses.dataclass(frozen=True)
class StateMap:
    """A map phi: S_A -> S_B of (params, optimizer state) with inverse psi.

    Attributes:
      name: a label, e.g. ``"momentum(pytorch) -> momentum(ema)"``.
      phi: ``phi(params, state_a) -> (params, state_b)``.
      psi: ``psi(params, state_b) -> (params, state_a)``.
      scales: the factor on each field of B that phi keeps, keyed by B's field name, with
        ``"params": 1.0``. A float for scalar maps; for diagonal fitted maps a pytree of arrays
        shaped like the field (the diagonal). Dropped fields are not in it.
      kind: ``"exact"`` (registered, holds in real arithmetic) or ``"fitted"``.
      residual: fitted maps: ||phi(A) - B|| / ||B|| over the visited states used for the fit
        (Frobenius over params and every float state field). None for exact maps.
      derivation: one line saying why the map is right (or how it was fitted).
      dropped: fields of either state that the map does not carry (phi or psi sets them to
        zero; see the module docstring for why that is harmless for exact maps).
      pairs: ``(field of A, field of B)`` for every kept field, params first.

    >>> m = find_map("momentum(lr=0.5, form='heavy_ball')", "momentum(lr=0.5, form='pytorch')")
    >>> m.name, m.scales, m.kappa_phi, m.kappa_psi
    ('(momentum(pytorch) -> momentum(heavy_ball))^-1', {'params': 1.0, 'm': -2.0}, 2.0, 2.0)
    """

    name: str
    phi: Phi
    psi: Phi
    scales: Mapping[str, Any]
    kind: str = "exact"
    residual: float | None = None
    derivation: str = ""
    dropped: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = (("params", "params"),)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def kappa_phi(self) -> float:
        """sigma_max / sigma_min of phi's Jacobian: max|s| / min|s| over kept fields (and, for a
        diagonal map, over all their coordinates); inf when a kept scale is zero."""
        return _kappa(self.scales.values())

    @property
    def kappa_psi(self) -> float:
        """The same for psi, whose Jacobian is diag(1 / s): equal to :attr:`kappa_phi`."""
        return _kappa(self.inverse_scales.values())

    @property
    def inverse_scales(self) -> dict[str, Any]:
        """psi's factors keyed by A's field names: 1 / s (zero where s is zero)."""
        return {a: _reciprocal(self.scales[b]) for a, b in self.pairs}

    def inverse(self) -> StateMap:
        """The map B -> A: phi and psi swapped, scales inverted."""
        return StateMap(
            name=f"({self.name})^-1",
            phi=self.psi,
            psi=self.phi,
            scales=self.inverse_scales,
            kind=self.kind,
            residual=self.residual,
            derivation=f"inverse of: {self.derivation}",
            dropped=self.dropped,
            pairs=tuple((b, a) for a, b in self.pairs),
        )


def _abs_values(scale: Any) -> np.ndarray:
    leaves = jax.tree.leaves(scale)
    return np.concatenate([np.abs(np.ravel(np.asarray(x, np.float64))) for x in leaves])


def _kappa(scales: Any) -> float:
    values = np.concatenate([_abs_values(s) for s in scales])
    low = float(values.min())
    return math.inf if low == 0.0 else float(values.max()) / low


def _reciprocal(scale: Any) -> Any:
    if isinstance(scale, (int, float)):
        return 0.0 if scale == 0 else 1.0 / scale
    return jax.tree.map(lambda s: np.where(s == 0, 0.0, 1.0 / np.where(s == 0, 1.0, s)), scale)


# ---------------------------------------------------------------------------------------------
# Per-field linear maps between NamedTuple states


def _times(tree: PyTree, s: float) -> PyTree:
    # Python floats are weakly typed: the product stays in the leaf's dtype.
    return jax.tree.map(lambda x: x * s, tree)


def _divide(tree: PyTree, s: float) -> PyTree:
    # Divide rather than multiply by 1/s: one rounding instead of two.
    return jax.tree.map(lambda x: x / s, tree)


def _zeros(tree: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, tree)


def _linear(
    name: str,
    a_cls: type,
    b_cls: type,
    carried: Mapping[str, tuple[str, float]],
    derivation: str,
) -> StateMap:
    """A per-field scalar map between two NamedTuple state classes with a ``count`` field.

    ``carried[f_B] = (f_A, s)`` means B.f_B = s * A.f_A; B's other float fields are set to zero
    (like the params) by phi, and A's fields not named in ``carried`` are set to zero by psi.
    """
    from_a = {a: (b, s) for b, (a, s) in carried.items()}

    def phi(params, state_a):
        fields = {"count": state_a.count}
        for f in b_cls._fields[1:]:
            if f in carried:
                a, s = carried[f]
                fields[f] = _times(getattr(state_a, a), s)
            else:
                fields[f] = _zeros(params)
        return params, b_cls(**fields)

    def psi(params, state_b):
        fields = {"count": state_b.count}
        for f in a_cls._fields[1:]:
            if f in from_a:
                b, s = from_a[f]
                fields[f] = _divide(getattr(state_b, b), s)
            else:
                fields[f] = _zeros(params)
        return params, a_cls(**fields)

    dropped = [f for f in a_cls._fields[1:] if f not in from_a]
    dropped += [f for f in b_cls._fields[1:] if f not in carried and f not in dropped]
    return StateMap(
        name=name,
        phi=phi,
        psi=psi,
        scales={"params": 1.0, **{b: float(s) for b, (_, s) in carried.items()}},
        kind="exact",
        derivation=derivation,
        dropped=tuple(dropped),
        pairs=(("params", "params"), *((a, b) for b, (a, _) in carried.items())),
    )


def identity_map(spec: Any, other: Any = None) -> StateMap:
    """The identity on A's state (both optimizers have the same state layout).

    phi = psi = id; every float field kept with factor 1 (kappa = 1).

    >>> identity_map("sgd(lr=0.1)").kappa_phi
    1.0
    """
    a = resolve(spec)
    label = a.text if other is None else f"{a.text} -> {resolve(other).text}"
    fields = _float_fields(a)

    def ident(params, state):
        return params, state

    names = ("state",) if fields is None else fields
    return StateMap(
        name=f"identity ({label})",
        phi=ident,
        psi=ident,
        scales={"params": 1.0, **{f: 1.0 for f in names}},
        kind="exact",
        derivation="same state layout and update rule: phi = id",
        pairs=(("params", "params"), *((f, f) for f in names)),
    )


def _float_fields(spec: OptimizerSpec) -> tuple[str, ...] | None:
    """The names of the float fields of the optimizer's NamedTuple state (None if not one)."""
    probe = {"x": jax.ShapeDtypeStruct((1,), jnp.float32)}
    state = jax.eval_shape(spec.build().init, probe)
    if not hasattr(state, "_fields"):
        return None
    return tuple(
        f
        for f in state._fields
        if any(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(getattr(state, f)))
    )


# ---------------------------------------------------------------------------------------------
# The registry of exact maps

EXACT_MAPS: list[tuple[str, str, MapBuilder]] = []


def exact_map(name_a: str, name_b: str) -> Callable[[MapBuilder], MapBuilder]:
    """Register a builder ``(spec_a, spec_b) -> StateMap | None`` for optimizers named a, b.

    The builder returns None when the hyperparameters do not satisfy the map's conditions. Only
    one direction needs registering: :func:`find_map` inverts it for B -> A.
    """

    def wrap(builder: MapBuilder) -> MapBuilder:
        EXACT_MAPS.append((name_a, name_b, builder))
        return builder

    return wrap


def _constant_lr(spec: OptimizerSpec) -> float | None:
    lr = spec.values["lr"]
    return float(lr.params["lr0"]) if lr.kind == "constant" else None


def _form(spec: OptimizerSpec) -> str:
    return spec.values["form"]


@exact_map("momentum", "momentum")
def _pytorch_to_ema(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """m_ema = (1 - beta) m_pt: multiply m_pt = beta m_pt + g by (1 - beta) to get the EMA
    recursion, and eta/(1-beta) m_ema = eta m_pt; holds for any (shared) schedule."""
    if (_form(a), _form(b)) != ("pytorch", "ema"):
        return None
    if a.values["beta"] != b.values["beta"] or a.values["lr"] != b.values["lr"]:
        return None
    beta = a.values["beta"]
    return _linear(
        "momentum(pytorch) -> momentum(ema)",
        MomentumState,
        MomentumState,
        {"m": ("m", 1.0 - beta)},
        "m_ema = (1 - beta) m_pt: (1-beta) times m_pt = beta m_pt + g is the EMA recursion, "
        "and eta/(1-beta) m_ema = eta m_pt",
    )


@exact_map("momentum", "momentum")
def _pytorch_to_heavy_ball(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """velocity = -eta m_pt: p_t = beta p_{t-1} - eta g = -eta (beta m_{t-1} + g) = -eta m_t, so
    theta + p = theta - eta m; needs one constant, nonzero eta (a schedule is folded into the
    velocity, and eta = 0 makes the map singular)."""
    if (_form(a), _form(b)) != ("pytorch", "heavy_ball"):
        return None
    eta = _constant_lr(a)
    if eta is None or eta == 0 or a.values["lr"] != b.values["lr"]:
        return None
    if a.values["beta"] != b.values["beta"]:
        return None
    return _linear(
        "momentum(pytorch) -> momentum(heavy_ball)",
        MomentumState,
        HeavyBallState,
        {"velocity": ("m", -eta)},
        "velocity = -eta m_pt: p_t = beta p_{t-1} - eta g = -eta (beta m_{t-1} + g) = -eta m_t",
    )


@exact_map("momentum", "momentum")
def _ema_to_heavy_ball(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """velocity = -eta/(1-beta) m_ema: compose m_pt = m_ema/(1-beta) with velocity = -eta m_pt;
    needs one constant, nonzero eta."""
    if (_form(a), _form(b)) != ("ema", "heavy_ball"):
        return None
    eta = _constant_lr(a)
    if eta is None or eta == 0 or a.values["lr"] != b.values["lr"]:
        return None
    if a.values["beta"] != b.values["beta"]:
        return None
    beta = a.values["beta"]
    return _linear(
        "momentum(ema) -> momentum(heavy_ball)",
        MomentumState,
        HeavyBallState,
        {"velocity": ("m", -eta / (1.0 - beta))},
        "velocity = -eta/(1-beta) m_ema: m_pt = m_ema/(1-beta) and velocity = -eta m_pt",
    )


@exact_map("sgd", "momentum")
def _sgd_to_momentum(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """With beta = 0 every form overwrites its buffer by (a multiple of) g before using it and
    steps -eta_t g: SGD's state is the count alone; the buffer is dropped."""
    if b.values["beta"] != 0.0 or a.values["lr"] != b.values["lr"]:
        return None
    cls = HeavyBallState if _form(b) == "heavy_ball" else MomentumState
    return _linear(
        f"sgd -> momentum({_form(b)}, beta=0)",
        SgdState,
        cls,
        {},
        "beta = 0: the buffer is overwritten by g (or -eta g) each step, the step is -eta_t g",
    )


@exact_map("adam", "rmsprop")
def _adam_to_rmsprop(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """Adam with b1 = 0 and no bias correction has m = g and steps eta g / (sqrt(v) + eps) with
    RMSprop's v recursion: v kept, m dropped (overwritten by g each step; psi sets m = 0)."""
    va, vb = a.values, b.values
    if va["b1"] != 0.0 or va["bias_correction"] or vb["eps_inside"]:
        return None
    if va["b2"] != vb["beta"] or va["eps"] != vb["eps"] or va["lr"] != vb["lr"]:
        return None
    return _linear(
        "adam(b1=0) -> rmsprop",
        AdamState,
        RmspropState,
        {"v": ("v", 1.0)},
        "b1 = 0: m = g, so the step is eta g / (sqrt(v) + eps) with v = b2 v + (1-b2) g^2",
    )


@exact_map("adam", "signsgd")
def _adam_to_signsgd(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """Adam with b1 = b2 = 0, eps = 0 steps eta g / sqrt(g^2) = eta sign(g) (g != 0); the bias
    corrections are 1 - 0^t = 1; m and v are overwritten each step and dropped."""
    va = a.values
    if va["b1"] != 0.0 or va["b2"] != 0.0 or va["eps"] != 0.0 or va["lr"] != b.values["lr"]:
        return None
    return _linear(
        "adam(b1=b2=eps=0) -> signsgd",
        AdamState,
        SgdState,
        {},
        "b1 = b2 = eps = 0: m = g, v = g^2, step eta g/|g| = eta sign(g); corrections 1 - 0^t = 1",
    )


def _reset(name: str, a: OptimizerSpec, b: OptimizerSpec, derivation: str) -> StateMap:
    """A map between two optimizers whose buffers are overwritten each step (so carry nothing):
    phi gives B's initial state at the params (count kept), psi A's."""

    def to(spec: OptimizerSpec):
        def move(params, state):
            fresh = spec.build().init(params)
            return params, fresh._replace(count=state.count)

        return move

    fields = [f for s in (a, b) for f in type(s.build().init({"w": jnp.zeros(1)}))._fields[1:]]
    return StateMap(
        name=name,
        phi=to(b),
        psi=to(a),
        scales={"params": 1.0},
        kind="exact",
        derivation=derivation,
        dropped=tuple(dict.fromkeys(fields)),
        pairs=(("params", "params"),),
    )


@exact_map("shampoo", "steepest")
def _shampoo_to_spectral(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """Shampoo without accumulation and eps = 0 steps (G G^T)^-1/4 G (G^T G)^-1/4 = U V^T on a
    matrix and g / |g| = sign(g) on a vector: steepest descent under the spectral norm with a
    unit step (sign descent on vectors); every buffer is this step's and carries nothing."""
    va, vb = a.values, b.values
    if va["accumulate"] or va["eps"] != 0.0 or va["lr"] != vb["lr"]:
        return None
    if (vb["norm"], vb["scale"], vb["beta"], vb["vector_norm"]) != ("spectral", "unit", 0.0,
                                                                    "linf"):  # fmt: skip
        return None
    return _reset(
        "shampoo(accumulate=false, eps=0) -> steepest(spectral, unit)",
        a,
        b,
        "L = G G^T, R = G^T G: L^-1/4 G R^-1/4 = U S^-1/2 U^T U S V^T V S^-1/2 V^T = U V^T",
    )


@exact_map("sgd", "sgd")
def _sgd_to_sgd(a: OptimizerSpec, b: OptimizerSpec) -> StateMap | None:
    """Identity (the state is the count alone): a control whose defect is the learning-rate
    difference, for any two learning rates."""
    return _linear(
        f"sgd -> sgd (identity, control: lr {a.values['lr']} vs {b.values['lr']})",
        SgdState,
        SgdState,
        {},
        "same state (count only); the defect measures the learning-rate difference",
    )


def find_map(a: Any, b: Any) -> StateMap | None:
    """The registered exact map from optimizer ``a`` to ``b``, or None.

    Equal specs give the identity. Otherwise builders registered for (a, b) are tried, then
    those registered for (b, a), whose map is inverted; the first whose conditions hold wins.

    Args:
      a, b: optimizer specs (strings, OptimizerSpecs, ...; see ``optimizers.resolve``).

    Returns:
      A StateMap of kind ``"exact"``, or None when no registered map applies.

    >>> adam = "adam(lr=0.01, b1=0, b2=0.9, bias_correction=False)"
    >>> find_map(adam, "rmsprop(lr=0.01, beta=0.9)").dropped
    ('m',)
    >>> find_map("rmsprop(lr=0.01, beta=0.9)", adam).scales
    {'params': 1.0, 'v': 1.0}
    >>> find_map("sgd", "adam") is None
    True
    """
    a, b = resolve(a), resolve(b)
    if a.canonical == b.canonical and (a.entry is not None or a.custom is b.custom):
        return identity_map(a)
    if a.entry is None or b.entry is None:
        return None
    for name_a, name_b, builder in EXACT_MAPS:
        if (name_a, name_b) == (a.name, b.name):
            found = builder(a, b)
            if found is not None:
                return found
    for name_a, name_b, builder in EXACT_MAPS:
        if (name_a, name_b) == (b.name, a.name):
            found = builder(b, a)
            if found is not None:
                return found.inverse()
    return None


# ---------------------------------------------------------------------------------------------
# Fitted maps


def _flat(tree: PyTree) -> np.ndarray:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return np.zeros(0)
    return np.concatenate([np.ravel(np.asarray(x).astype(np.float64)) for x in leaves])


class Slots:
    """Named slots of any optimizer state: a flat NamedTuple's fields, or, for nested optax
    states (``optax.adam``'s ``(ScaleByAdamState(count, mu, nu), EmptyState())``, chains), the
    subtrees under each outermost NamedTuple attribute, named by the attribute (``mu``) or, when
    two share a name, by their path (``0.mu``, ``1.mu``).

    ``get(state, name)`` is the slot's list of leaves; ``build(values)`` assembles a state of the
    template's structure from ``{name: leaves}`` (other slots keep the template's leaves).

    >>> import jax.numpy as jnp, optax
    >>> view = Slots(optax.adam(0.1).init({"w": jnp.ones(2)}))
    >>> view.names, view.float_names
    (['count', 'mu', 'nu'], ['mu', 'nu'])
    """

    def __init__(self, template: PyTree):
        self.template = template
        paths, self.treedef = jax.tree_util.tree_flatten_with_path(template)
        self.leaves = [leaf for _, leaf in paths]
        keys = [self._key(path) for path, _ in paths]
        short = {}
        for k in dict.fromkeys(keys):
            short.setdefault(k[-1], []).append(k)
        self._name = {k: (k[-1] if len(short[k[-1]]) == 1 else ".".join(k)) for k in keys}
        self.index: dict[str, list[int]] = {}
        self._path: dict[str, tuple] = {}
        for i, (k, (path, _)) in enumerate(zip(keys, paths, strict=True)):
            self.index.setdefault(self._name[k], []).append(i)
            self._path.setdefault(self._name[k], path[: len(k)] if k != ("state",) else ())
        self.names = list(self.index)
        self.float_names = [
            n for n in self.names
            if all(jnp.issubdtype(jnp.result_type(self.leaves[i]), jnp.floating)
                   for i in self.index[n])
        ]  # fmt: skip

    @staticmethod
    def _key(path: tuple) -> tuple[str, ...]:
        parts = []
        for entry in path:
            if isinstance(entry, jax.tree_util.GetAttrKey):
                parts.append(entry.name)
                return tuple(parts)
            parts.append(str(getattr(entry, "idx", getattr(entry, "key", entry))))
        return tuple(parts) or ("state",)

    def subtree(self, state: PyTree, name: str) -> PyTree:
        """The slot as the state holds it (``state.m`` for a flat NamedTuple's field ``m``)."""
        node = state
        for entry in self._path[name]:
            if isinstance(entry, jax.tree_util.GetAttrKey):
                node = getattr(node, entry.name)
            elif isinstance(entry, jax.tree_util.SequenceKey):
                node = node[entry.idx]
            elif isinstance(entry, jax.tree_util.DictKey):
                node = node[entry.key]
            else:
                node = node[entry.key]
        return node

    def get(self, state: PyTree, name: str) -> list:
        leaves = jax.tree.leaves(state)
        return [leaves[i] for i in self.index[name]]

    def build(self, values: dict[str, list], fallback: PyTree | None = None) -> PyTree:
        leaves = list(jax.tree.leaves(fallback) if fallback is not None else self.leaves)
        for name, new in values.items():
            for i, leaf in zip(self.index[name], new, strict=True):
                leaves[i] = leaf
        return jax.tree.unflatten(self.treedef, leaves)


def _layout(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(np.shape(x) for x in leaves)


def _fit(x: np.ndarray, y: np.ndarray, family: str) -> tuple[np.ndarray, float]:
    """Least-squares s with y ~ s x over visited states (rows); returns (s, squared residual).

    Non-finite entries (a NaN in a diverged run) are left out of the fit.
    """
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(ok, x, 0.0), np.where(ok, y, 0.0)
    axis = None if family == "scalar" else 0
    with np.errstate(over="ignore", invalid="ignore"):  # huge states overflow to inf: reported
        num, den = np.sum(x * y, axis=axis), np.sum(x * x, axis=axis)
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        s = np.where(np.isfinite(s), s, 0.0)
        return s, float(np.sum((s * x - y) ** 2))


def _unflat_like(vector: np.ndarray, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    out, start = [], 0
    for leaf in leaves:
        size = int(np.size(leaf))
        out.append(vector[start : start + size].reshape(np.shape(leaf)))
        start += size
    return jax.tree.unflatten(treedef, out)


def fit_map(
    states_a: Sequence[tuple],
    states_b: Sequence[tuple],
    family: str = "scalar",
) -> StateMap:
    """Fit the best per-field map A -> B from a family by least squares on visited states.

    Each float field f_B of B's state is fitted as f_B ~ s * f_A (``family='scalar'``, one
    number) or f_B ~ diag(s) f_A (``'diagonal'``, one number per coordinate):
    s = <f_A, f_B> / <f_A, f_A> summed over the visited states (per coordinate for the diagonal).
    f_A is the field of A with the same name when its layout matches, else the field of A with
    the same layout (tree structure and shapes) that fits best. The params map is the identity.
    A field of B with no counterpart, or whose fitted scale is zero, is dropped: phi sets it to
    zero. psi divides by s (zero where s is zero: that coordinate is not invertible, and kappa is
    inf); fields of A that no field of B uses are set to zero by psi. Integer fields (``count``)
    are copied.

    Args:
      states_a: ``(params, state, ...)`` tuples of optimizer A (extra items, like the gradient
        of :func:`optimorph.equivalence.defect.visited_states`, are ignored).
      states_b: the same for B, at the same steps of a matched run (same seed, same batches).
      family: ``'scalar'`` or ``'diagonal'``.

    Returns:
      A StateMap of kind ``"fitted"`` whose ``residual`` is ||phi(A) - B|| / ||B|| over all the
      visited states (Frobenius over params and every float field of B).

    >>> import jax.numpy as jnp
    >>> from optimorph.optimizers.first_order import MomentumState
    >>> a = [({"w": jnp.ones(2)}, MomentumState(jnp.int32(t), {"w": jnp.arange(2.0) + t}))
    ...      for t in range(3)]
    >>> b = [(p, s._replace(m={"w": 3.0 * s.m["w"]})) for p, s in a]
    >>> fitted = fit_map(a, b)
    >>> float(fitted.scales["m"]), fitted.residual
    (3.0, 0.0)
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if len(states_a) != len(states_b) or not states_a:
        raise ValueError(
            f"fit_map needs the same positive number of visited states of A and B, "
            f"got {len(states_a)} and {len(states_b)}"
        )
    template_a, template_b = states_a[0][1], states_b[0][1]
    view_a, view_b = Slots(template_a), Slots(template_b)
    fields_a, fields_b = view_a.float_names, view_b.float_names
    # Per slot: visited values stacked as rows (n_states, n_coordinates), float64.
    rows_a = {f: np.stack([_flat(view_a.get(s[1], f)) for s in states_a]) for f in fields_a}
    rows_b = {f: np.stack([_flat(view_b.get(s[1], f)) for s in states_b]) for f in fields_b}

    chosen: dict[str, tuple[str, Any]] = {}  # slot of B -> (slot of A, scale)
    for fb in fields_b:
        layout = _layout(view_b.get(template_b, fb))
        same = [fa for fa in fields_a if _layout(view_a.get(template_a, fa)) == layout]
        candidates = [fb] if fb in same else same
        best = None
        for fa in candidates:
            s, sq = _fit(rows_a[fa], rows_b[fb], family)
            if best is None or sq < best[2]:
                best = (fa, s, sq)
        if best is None or not np.any(best[1] != 0):
            continue  # no usable counterpart: dropped
        fa, s, _ = best
        scale = float(s) if family == "scalar" else _unflat_like(s, view_b.subtree(template_b, fb))
        chosen[fb] = (fa, scale)

    from_a: dict[str, tuple[str, Any]] = {}
    for fb, (fa, scale) in chosen.items():
        from_a.setdefault(fa, (fb, _reciprocal(scale)))

    def _map(state_src, view_src, view_dst, template_dst, plan, floats_dst):
        values = {}
        for f in view_dst.names:
            if f in plan:
                src, scale = plan[f]
                scale = scale if isinstance(scale, float) else jax.tree.leaves(scale)
                values[f] = _scaled(view_src.get(state_src, src), scale)
            elif f in floats_dst:
                values[f] = _zeros(view_dst.get(template_dst, f))
            elif f in view_src.index:  # integer slots: the count is shared
                values[f] = view_src.get(state_src, f)
        return view_dst.build(values)

    def phi(params, state_a):
        return params, _map(state_a, view_a, view_b, template_b, chosen, fields_b)

    def psi(params, state_b):
        return params, _map(state_b, view_b, view_a, template_a, from_a, fields_a)

    num = den = 0.0
    for (pa, sa, *_), (pb, sb, *_) in zip(states_a, states_b, strict=True):
        mapped = _flat(_float_part(phi(pa, sa)))
        target = _flat(_float_part((pb, sb)))
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged run gives inf / NaN
            num += float(np.sum((mapped - target) ** 2))
            den += float(np.sum(target**2))
    residual = math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)

    dropped = [f for f in fields_b if f not in chosen]
    dropped += [f for f in fields_a if f not in from_a and f not in dropped]
    return StateMap(
        name=f"fitted {family} map {_type_name(template_a)} -> {_type_name(template_b)}",
        phi=phi,
        psi=psi,
        scales={"params": 1.0, **{fb: scale for fb, (_, scale) in chosen.items()}},
        kind="fitted",
        residual=residual,
        derivation=(
            f"least squares, {family} per field, on {len(states_a)} visited states: "
            + (", ".join(f"{fb} ~ s * {fa}" for fb, (fa, _) in chosen.items()) or "params only")
        ),
        dropped=tuple(dropped),
        pairs=(("params", "params"), *((fa, fb) for fb, (fa, _) in chosen.items())),
    )


def _type_name(state: PyTree) -> str:
    return type(state).__name__ if hasattr(state, "_fields") else "state"


def _scaled(tree: PyTree, scale: Any) -> PyTree:
    if isinstance(scale, float):
        return _times(tree, scale)
    return jax.tree.map(lambda x, s: x * jnp.asarray(s, x.dtype), tree, scale)


def _float_part(tree: PyTree) -> list:
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
