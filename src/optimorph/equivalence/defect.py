"""The one-step simulation defect between two optimizers at a precision (DESIGN.md section 3).

An optimizer at precision p is the rounded map U_p(s, g) = fl_p(U(s, g)) on states
s = (params, optimizer state). Given a state map phi: S_A -> S_B (inverse psi), B simulates A for
one step from s when U_B(phi(s), g) = phi(U_A(s, g)). The defect measures how far that fails on
the states A actually visits:

    D_AB = max_s ||U_B(phi(s), g) - phi(U_A(s, g))|| / ||phi(U_A(s, g))||,

and D_BA the same with the roles swapped (B's visited states, psi). Norms are Euclidean over the
whole flattened state: params and the state fields the map keeps (dropped fields and the integer
count are left out). phi's outputs are rounded to B's formats (the policy's params and state
formats), because a state B could be in has its stored values at p; phi itself is applied in
float64 (float32 without x64) to the exactly widened stored values, so fl_p(phi(s)) is phi
rounded once. All maps keep params, so the gradient at phi(s) is the gradient g recorded at s.

Visited states are states of a real training run: :func:`optimorph.engine.train` records them
(``visit_every``: each optimizer's first seed, the stored params and state before the step and the
gradient of that step's minibatch), and :func:`simulation_defect` takes them from there
(``visited=``). Without them it trains each optimizer alone for its visits
(:func:`visited_states`, the same trainer with one seed; a run with more lanes may differ from
it in the last bit: XLA CPU's reductions depend on the lane count, docs/sweeps.md).

Choices made here (documented, not in DESIGN.md):

* The optimizers run with their hyperparameters stored in the policy's hparams format, as in the
  engine, while an exact map's factors (1 - beta, eta) are the spec's real values. At low
  precision that mismatch (e.g. 0.9 stored as 0.8999 in fp16) is part of the measured defect; it
  is of the order of the unit roundoff, like the rest.
* Stochastic rounding (of the whole policy or of one role's format) makes U_p random: a visited
  step is replayed with the run's own draws (the seed's rounding key and the step index), the
  same for A and B, so the defect is measured under common random numbers. Kahan summation adds
  a compensation to the state that no visit records, so it raises a ValueError.
* A coordinate that is NaN in both states, or equal infinities, agrees; NaN or inf in one state
  only makes that state's defect inf (e.g. Adam with eps = 0 on a zero gradient gives 0/0 where
  sign descent gives 0). 0/0 for the ratio (both states zero) is 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimorph.engine import step, train
from optimorph.equivalence.maps import Slots, StateMap, find_map, fit_map
from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.precision import FP32, FP64, Precision
from optimorph.precision import precision as make_precision
from optimorph.problems import Problem
from optimorph.problems import problem as make_problem

__all__ = ["Defect", "one_step", "simulation_defect", "unstack", "visited_states"]

PyTree = Any
Visited = tuple[PyTree, PyTree, PyTree]  # (params, state, grads)

_CACHE_MAX = 32
_STEP: dict = {}  # compiled one-step maps (vmapped over a leading axis of states)
_ROUND: dict = {}  # compiled roundings to a policy's params and state formats
_FIT: dict = {}  # fitted maps, keyed by the visited states they were fitted on


@dataclasses.dataclass(frozen=True)
class Defect:
    """One-step simulation defects of a pair of optimizers at a precision, both directions
    (made by :func:`simulation_defect`, whose docstring has an example).

    Attributes:
      a, b: the optimizers' canonical specs.
      precision: the policy's spec.
      ab_max, ab_median: max and median over A's visited states of
        ||U_B(phi(s), g) - phi(U_A(s, g))|| / ||phi(U_A(s, g))||.
      ba_max, ba_median: the same over B's visited states with psi.
      ab, ba: the per-state values, in visiting order.
      map_name, map_kind: the map used (``'exact'`` or ``'fitted'``).
      kappa_phi, kappa_psi: its condition numbers.
      residual: the fit residual of a fitted map (None for exact maps).
      dropped: fields the map does not carry (left out of the norms).
    """

    a: str
    b: str
    precision: str
    ab_max: float
    ab_median: float
    ba_max: float
    ba_median: float
    ab: tuple[float, ...]
    ba: tuple[float, ...]
    map_name: str
    map_kind: str
    kappa_phi: float
    kappa_psi: float
    residual: float | None
    dropped: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# The rounded update, as the engine computes it


def _policy(precision: Any) -> Precision:
    policy = make_precision(precision)
    if policy.kahan:
        # Kahan adds a compensation to the state, which no visit records: the defect is defined
        # for the rounded map of (params, optimizer state) alone.
        raise ValueError(f"the simulation defect needs a policy without kahan; got {policy.name!r}")
    return policy


def _replay(policy: Precision, count: int, t: Any, rounding_key: Any) -> tuple[Any, Any]:
    """The step indices (int32, one per state) and rounding key a replay of ``count`` steps
    needs. A keyed policy (stochastic rounding, a random transform) replays the run's own draws,
    so both are required; for any other policy they change nothing and default to zeros."""
    if policy.keyed and (t is None or rounding_key is None):
        raise ValueError(
            f"precision {policy.name!r} draws random numbers (stochastic rounding or a random "
            "transform): a replayed step draws the run's, so give t= (the step index) and "
            "rounding_key= (engine.step.seed_keys(seed).rounding of the run's seed)"
        )
    ts = jnp.zeros(count, jnp.int32) if t is None else jnp.asarray(t, jnp.int32)
    return jnp.broadcast_to(ts, (count,)), rounding_key if policy.keyed else None


def _transformation(spec: OptimizerSpec, policy: Precision) -> optax.GradientTransformation:
    """The optimizer with its hyperparameters as the engine's step sees them."""
    return spec.build(step.stored_hparams(spec, policy))


def _update(tx, policy: Precision, params, state, grads, t, key) -> tuple[PyTree, PyTree]:
    """U_p: the engine's step t from (params, state) with a given (already rounded) gradient
    (``key``: the run's rounding key, None unless the policy draws random numbers)."""
    new = step.apply_update(tx, policy, params, state, None, grads, rounding_key=key, t=t)
    return new.params, new.state


def _spec_key(spec: OptimizerSpec) -> tuple:
    return (spec.canonical, id(spec.custom))


def _cached(cache: dict, key: tuple, make, keep: tuple, size: int = _CACHE_MAX):
    """``make()`` once per key; the ``size`` most recently used are kept (so an entry in steady
    use, like a stepper, outlives a run of one-off keys)."""
    if key in cache:
        cache[key] = cache.pop(key)  # now the most recently used
    else:
        if len(cache) >= size:
            cache.pop(next(iter(cache)))
        cache[key] = (keep, make())  # `keep` holds the objects whose ids are in the key
    return cache[key][1]


def _stepper(spec: OptimizerSpec, policy: Precision):
    """jit(vmap(U_p)) over a leading axis of (params, state, grads, t); one rounding key."""

    def make():
        tx = _transformation(spec, policy)
        one = lambda p, s, g, t, k: _update(tx, policy, p, s, g, t, k)  # noqa: E731
        return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))

    return _cached(_STEP, (_spec_key(spec), policy), make, (spec,))


def one_step(
    spec: Any,
    precision: Any,
    params: PyTree,
    state: PyTree,
    grads: PyTree,
    *,
    stacked: bool = False,
    t: Any = None,
    rounding_key: jax.Array | None = None,
) -> tuple[PyTree, PyTree]:
    """The rounded update U_p: one step of the optimizer at the precision, as the engine takes it.

    params <- fl_p(params + u) and state <- fl_p(state') where (u, state') = update(g, state).

    Args:
      spec: optimizer spec (string or OptimizerSpec).
      precision: precision spec or policy (no Kahan).
      params: params in the policy's params format.
      state: optimizer state in the policy's state formats.
      grads: the gradient, already rounded to the grads format.
      stacked: the arguments carry a leading axis of states (as visited states are stacked),
        and so does the result: one compiled call for all of them.
      t, rounding_key: the step index (one per state when stacked) and the run's rounding key
        (``engine.step.seed_keys(seed).rounding``); required when the policy draws random
        numbers (:attr:`Precision.keyed`), whose draws the replay then repeats; ignored
        otherwise.

    Returns:
      ``(params, state)`` after the step, in the policy's formats.

    >>> import jax.numpy as jnp
    >>> p, s = one_step("sgd(lr=0.5)", "fp32", {"w": jnp.ones(2, jnp.float32)},
    ...                 resolve("sgd").build().init(None), {"w": jnp.ones(2, jnp.float32)})
    >>> p["w"].tolist(), int(s.count)
    ([0.5, 0.5], 1)
    """
    spec, policy = resolve(spec), _policy(precision)
    if stacked:
        count = jax.tree.leaves(params)[0].shape[0]
        replay = _replay(policy, count, t, rounding_key)
        return _stepper(spec, policy)(params, state, grads, *replay)
    batch = jax.tree.map(lambda x: jnp.asarray(x)[None], (params, state, grads))
    new = _stepper(spec, policy)(*batch, *_replay(policy, 1, t, rounding_key))
    return jax.tree.map(lambda x: x[0], new)


# ---------------------------------------------------------------------------------------------
# Visited states


def _visit(problem, spec, policy, seed, steps, batch_size, every) -> Visited:
    """Stacked (params, state, grads) with a leading axis over the recorded steps, from the
    engine's own run (:func:`optimorph.engine.train` with ``visit_every``): one copy of the
    step, so these are the states a training run visits, bit for bit."""
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    for name, value in (("steps", steps), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if steps % every:
        raise ValueError(f"every={every} must divide steps={steps}")
    result = train(prob, [spec], seeds=[seed], steps=steps, batch_size=batch_size,
                   precision=policy, eval_every=steps, visit_every=every, progress=False,
                   keep_params=False)  # fmt: skip
    return result.visited[0]


def _portable(x: Any) -> bool:
    """A leaf whose host copy is the same value of the same type: not weakly typed (a host copy
    comes back strongly typed, which changes dtype promotion downstream) nor a PRNG key array."""
    return not getattr(x, "weak_type", False) and not jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.extended
    )


def unstack(stacked: PyTree) -> list:
    """The stacked tree as one tree of device arrays per leading index.

    Sliced in NumPy from one host copy and sent back in one batched transfer: slicing on the
    device is one dispatch per leaf and state (thousands), and slicing moves bits, so the result
    is the same. Leaves that are not :func:`_portable` are sliced on the device.
    """
    leaves, treedef = jax.tree.flatten(stacked)
    count = leaves[0].shape[0]
    ok = [_portable(x) for x in leaves]
    fetched = iter(jax.device_get([x for x, keep in zip(leaves, ok, strict=True) if keep]))
    host = [next(fetched) if keep else x for x, keep in zip(leaves, ok, strict=True)]
    rows = jax.device_put([[x[i, ...] for x in host] for i in range(count)])
    return [jax.tree.unflatten(treedef, row) for row in rows]


def visited_states(
    problem: Any,
    spec: Any,
    precision: Any,
    *,
    seed: int = 0,
    steps: int = 200,
    batch_size: int | None = None,
    every: int = 10,
) -> list[Visited]:
    """The states a training run of ``spec`` at ``precision`` visits, with their gradients.

    The run is the engine's (:func:`optimorph.engine.train` with ``visit_every=every`` and one
    seed): params stored in the params format; at step t, g = round_grads(grad
    loss(to_compute(params), batch_t)), (u, state) = update(g, state), state rounded to its
    formats, params = fl(params + u). Seed s gives the engine's initialisation and batch order
    (epoch permutations drawn from the seed); ``batch_size=None`` is full batch.

    Args:
      problem: a Problem or problem spec.
      spec: optimizer spec.
      precision: precision spec or policy (no Kahan).
      seed: training seed.
      steps: updates to run; must be a multiple of ``every``.
      batch_size: minibatch size, None for full batch.
      every: record every this many steps (steps 0, every, 2 every, ...).

    Returns:
      ``steps // every`` tuples ``(params, state, grads)``: the state *before* the update at that
      step and the gradient that update uses.

    >>> v = visited_states("quadratic(dim=3)", "sgd(lr=0.1)", "fp32", steps=20, every=10)
    >>> len(v), [int(s.count) for _, s, _ in v]
    (2, [0, 10])
    """
    stacked = _visit(problem, resolve(spec), _policy(precision), seed, steps, batch_size, every)
    return unstack(stacked)


# ---------------------------------------------------------------------------------------------
# The defect


def _wide_format():
    return FP64 if jax.config.jax_enable_x64 else FP32


def _widen(tree: PyTree) -> PyTree:
    """Float leaves converted exactly to float64 (float32 without x64); others untouched."""
    fmt = _wide_format()
    return jax.tree.map(
        lambda x: fmt.round(x) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
    )


def _mapped(fn, policy: Precision, params: PyTree, state: PyTree, ts, key) -> tuple[PyTree, PyTree]:
    """fl_p(fn(params, state)) for a stack of states, each stored before step ``ts[i]``: the
    map applied in the wide dtype, then params rounded to the params format and the state to
    its formats (a keyed policy's state with the key the run stored that state with).

    The map runs eagerly: its few products and quotients per leaf are exact IEEE operations
    either way, and a compiled program per map (two per pair) cost more than every defect's
    arithmetic. The rounding, op by op eagerly slow, is one compiled program per policy (and
    state layout), shared by every map into that layout.
    """
    wide = jax.vmap(fn)(_widen(params), _widen(state))
    return _rounder(policy)(wide, (params, state), ts, key)


def _rounder(policy: Precision):
    """jit(vmap) of (mapped (params, state), stored (params, state), t) -> the mapped pair with
    params in the params format and the state in its formats.

    Mapped over the leading axis of states: a block format's blocks (a code map's run over the
    flattened tensor, an MX block along a scalar leaf's stacked axis) must not span two states.
    Where the map leaves a value as it was (same structure, the same number), the stored value
    is kept: it is a state B can be in, and rounding a stored value again need not return it
    (a code map without -1, like torchao's 4-bit one, shrinks a block's absmax each time).
    """

    def one(mapped, stored, t, key):
        params, state = mapped
        key = step.stored_state_key(policy, key, t)
        rounded = (policy.cast_params(params), policy.round_state(state, key))
        if jax.tree.structure(rounded) != jax.tree.structure(stored):
            return rounded
        return jax.tree.map(_kept_where_unchanged, rounded, mapped, stored)

    def make():
        return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))

    return _cached(_ROUND, (policy,), make, ())


def _kept_where_unchanged(rounded, mapped, stored):
    """``stored`` where the map returned it unchanged, else ``rounded`` (float leaves)."""
    if not jnp.issubdtype(rounded.dtype, jnp.floating) or rounded.dtype != stored.dtype:
        return rounded
    return jnp.where(mapped == stored.astype(mapped.dtype), stored, rounded)


def _kept(params: PyTree, state: PyTree, fields: set[str]) -> list:
    """Float leaves of params and of the state slots in ``fields`` ('state': all of them)."""
    if "state" in fields:
        parts = [state]
    else:
        view = Slots(state)
        parts = [view.get(state, f) for f in view.names if f in fields]
    return [
        np.asarray(x).astype(np.float64)
        for x in jax.tree.leaves((params, parts))
        if jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]


def _relative(got: list, want: list) -> float:
    """||got - want|| / ||want|| over the concatenation of one state's leaves.

    Coordinates equal in both (infinities included) or NaN in both count as agreeing; a NaN or
    inf in one and not the other makes the defect inf. 0/0 is 0 (both states are zero).
    """
    num = den = 0.0
    for x, y in zip(got, want, strict=True):
        with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, overflowing squares
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            diff = np.where(same, 0.0, x - y)
            if not np.all(np.isfinite(diff)):
                return math.inf
            num += float(np.sum(diff**2))
            den += float(np.sum(np.where(np.isfinite(y), y, 0.0) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num / den)


def _digest(stacked: PyTree) -> tuple | None:
    """The stacked visited states as a hashable value (structure, dtypes, shapes and a hash of
    the bytes), or None when a leaf has no exact host copy (see :func:`_portable`)."""
    leaves, treedef = jax.tree.flatten(stacked)
    if not all(_portable(x) for x in leaves):
        return None
    h = hashlib.blake2b(digest_size=32)
    for x in jax.device_get(leaves):
        h.update(f"{x.dtype}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return treedef, h.hexdigest()


def _fitted(visit_a: PyTree, visit_b: PyTree, family: str) -> StateMap:
    """``fit_map`` on the visited states; the fit is a function of the states alone, so equal
    states (a rerun, the same pair in another test) reuse the map."""
    digests = (_digest(visit_a), _digest(visit_b))
    if None in digests:
        return fit_map(unstack(visit_a), unstack(visit_b), family)
    key = ("fitted", family, *digests)
    return _cached(_FIT, key, lambda: fit_map(unstack(visit_a), unstack(visit_b), family), ())


def _direction(visited: Visited, replay: tuple, step_src, step_dst, phi, policy,
               fields: set[str]) -> list[float]:  # fmt: skip
    """Per visited state s of the source: ||U_dst(phi(s), g) - phi(U_src(s, g))|| / ||...||,
    ``fields`` being the slots the map keeps; ``replay``: the visits' steps and rounding key."""
    params, state, grads = visited
    ts, key = replay
    params_src, state_src = step_src(params, state, grads, ts, key)
    want = _mapped(phi, policy, params_src, state_src, ts + 1, key)
    got = step_dst(*_mapped(phi, policy, params, state, ts, key), grads, ts, key)
    # The norms only read values: one host copy, rows sliced in NumPy (exact, like the device).
    got, want = jax.device_get((got, want))
    got_rows, want_rows = _kept(*got, fields), _kept(*want, fields)
    count = jax.tree.leaves(got)[0].shape[0]
    return [
        _relative([x[i, ...] for x in got_rows], [y[i, ...] for y in want_rows])
        for i in range(count)
    ]


def simulation_defect(
    a: Any,
    b: Any,
    problem: Any,
    precision: Any,
    *,
    smap: StateMap | None = None,
    family: str = "scalar",
    visited: tuple[Visited, Visited] | None = None,
    visit_steps: Any = None,
    seed: int = 0,
    steps: int = 200,
    batch_size: int | None = None,
    every: int = 10,
) -> Defect:
    """D_AB and D_BA, the one-step simulation defects of A and B at a precision.

    D_AB = max over A's visited states s of ||U_B(phi(s), g) - phi(U_A(s, g))|| /
    ||phi(U_A(s, g))||, with phi's outputs rounded to B's formats (see the module docstring);
    D_BA symmetrically over B's visited states with psi. Medians are reported beside the maxima.

    Args:
      a, b: optimizer specs.
      problem: a Problem or problem spec.
      precision: precision spec or policy (no Kahan). A policy that draws random numbers
        (stochastic rounding, a random transform) replays each visited step with the run's own
        draws, the same for A and B (common random numbers: seeds are paired); phi's outputs
        are rounded with the key the run stored that state with.
      smap: the map A -> B; default: the registered exact map (:func:`find_map`), else one
        fitted by :func:`fit_map` on the visited states of A and B of matched runs (same seed,
        same batches), at the same steps the defect is measured on.
      family: the fitted map's family, ``'scalar'`` or ``'diagonal'``.
      visited: A's and B's visited states from matched runs, each ``(params, state, grads)``
        stacked along a leading axis (``TrainResult.visited`` of a ``train(visit_every=...)``);
        default: run them here with the settings below.
      visit_steps: with ``visited``, the step each state was recorded before
        (``TrainResult.visit_steps``); needed when the policy draws random numbers.
      seed: the runs' seed (with ``visited``: the seed they were recorded from, the trainer's
        first); a keyed policy's replay draws from its rounding key.
      steps, batch_size, every: the runs when ``visited`` is not given (see
        :func:`visited_states`).

    Returns:
      A :class:`Defect`.

    >>> d = simulation_defect("adam(lr=0.01, b1=0, b2=0, eps=0)", "signsgd(lr=0.01)",
    ...                       "quadratic(dim=4, kappa=10)", "fp32", steps=20, every=10)
    >>> d.ab_max, d.ba_max, d.map_kind, d.dropped
    (0.0, 0.0, 'exact', ('m', 'v'))
    """
    spec_a, spec_b, policy = resolve(a), resolve(b), _policy(precision)
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    if visited is not None:
        visit_a, visit_b = visited
    else:
        visit_a = _visit(prob, spec_a, policy, seed, steps, batch_size, every)
        visit_b = _visit(prob, spec_b, policy, seed, steps, batch_size, every)
        visit_steps = np.arange(0, steps, every)
    key = step.seed_keys(seed).rounding if policy.keyed else None
    replay_a = _replay(policy, jax.tree.leaves(visit_a)[0].shape[0], visit_steps, key)
    replay_b = _replay(policy, jax.tree.leaves(visit_b)[0].shape[0], visit_steps, key)
    if smap is None:
        smap = find_map(spec_a, spec_b) or _fitted(visit_a, visit_b, family)
    inverse = smap.inverse()
    step_a, step_b = _stepper(spec_a, policy), _stepper(spec_b, policy)
    ab = _direction(visit_a, replay_a, step_a, step_b, smap.phi, policy, set(smap.scales))
    ba = _direction(visit_b, replay_b, step_b, step_a, inverse.phi, policy, set(inverse.scales))
    return Defect(
        a=spec_a.canonical,
        b=spec_b.canonical,
        precision=policy.name,
        ab_max=float(np.max(ab)),
        ab_median=float(np.median(ab)),
        ba_max=float(np.max(ba)),
        ba_median=float(np.median(ba)),
        ab=tuple(ab),
        ba=tuple(ba),
        map_name=smap.name,
        map_kind=smap.kind,
        kappa_phi=smap.kappa_phi,
        kappa_psi=smap.kappa_psi,
        residual=smap.residual,
        dropped=smap.dropped,
    )
