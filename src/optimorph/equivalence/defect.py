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
(``visited=``). Without them it runs its own compiled run (:func:`visited_states`: same seed,
same init and batches; the trainer's lanes may differ from it in the last bit: XLA CPU's
reductions depend on the lane count, docs/sweeps.md).

Choices made here (documented, not in DESIGN.md):

* The optimizers run with their hyperparameters stored in the policy's hparams format, as in the
  engine, while an exact map's factors (1 - beta, eta) are the spec's real values. At low
  precision that mismatch (e.g. 0.9 stored as 0.8999 in fp16) is part of the measured defect; it
  is of the order of the unit roundoff, like the rest.
* Only deterministic rounding is supported: stochastic rounding makes U_p random and Kahan
  summation adds a compensation to the state, so both raise a ValueError.
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

from optimorph.engine import step
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
_VISIT: dict = {}  # compiled runs, keyed by what they close over (and holding those objects)
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
    if policy.rounding != "nearest" or policy.kahan:
        # Stochastic rounding makes U_p random and Kahan adds a compensation to the state: the
        # one-step defect is defined for the deterministic rounded map only.
        raise ValueError(
            f"the simulation defect needs rounding=nearest without kahan; got {policy.name!r}"
        )
    return policy


def _transformation(spec: OptimizerSpec, policy: Precision) -> optax.GradientTransformation:
    """The optimizer with its hyperparameters as the engine's step sees them."""
    return spec.build(step.stored_hparams(spec, policy))


def _update(tx, policy: Precision, params, state, grads) -> tuple[PyTree, PyTree]:
    """U_p: the engine's step from (params, state) with a given (already rounded) gradient."""
    new = step.apply_update(tx, policy, params, state, None, grads)
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
    """jit(vmap(U_p)) over a leading axis of (params, state, grads)."""

    def make():
        tx = _transformation(spec, policy)
        return jax.jit(jax.vmap(lambda p, s, g: _update(tx, policy, p, s, g)))

    return _cached(_STEP, (_spec_key(spec), policy), make, (spec,))


def one_step(
    spec: Any,
    precision: Any,
    params: PyTree,
    state: PyTree,
    grads: PyTree,
    *,
    stacked: bool = False,
) -> tuple[PyTree, PyTree]:
    """The rounded update U_p: one step of the optimizer at the precision, as the engine takes it.

    params <- fl_p(params + u) and state <- fl_p(state') where (u, state') = update(g, state).

    Args:
      spec: optimizer spec (string or OptimizerSpec).
      precision: precision spec or policy (round to nearest, no Kahan).
      params: params in the policy's params format.
      state: optimizer state in the policy's state formats.
      grads: the gradient, already rounded to the grads format.
      stacked: the arguments carry a leading axis of states (as visited states are stacked),
        and so does the result: one compiled call for all of them.

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
        return _stepper(spec, policy)(params, state, grads)
    batch = jax.tree.map(lambda x: jnp.asarray(x)[None], (params, state, grads))
    new = _stepper(spec, policy)(*batch)
    return jax.tree.map(lambda x: x[0], new)


# ---------------------------------------------------------------------------------------------
# Visited states


def _runner(prob: Problem, spec: OptimizerSpec, policy: Precision, plan: tuple):
    """A compiled run ``seed key -> stacked (params, state, grads)`` at every ``every``-th step."""
    steps, every, order = plan

    def make():
        tx = _transformation(spec, policy)

        def run(key, train):
            keys = step.run_keys(key)
            params, state, _ = step.start(prob.init, tx, policy, keys)

            def one(carry, t):
                params, state, perm = carry
                perm = order.advance(keys.data, perm, t)
                batch = order.batch(train, perm, t)
                _, g, params_c = step.gradient(prob.loss, policy, params, batch)
                new = step.apply_update(tx, policy, params, state, None, g, params_c=params_c)
                return (new.params, new.state, perm), (params, state, g)

            def inner(carry, t):
                # The record rides in the carry and is replaced at the interval's first step:
                # one traced step (half the compile time of a separate first step) and no
                # per-step outputs kept in memory.
                state, record = carry
                state, now = one(state, t)
                keep = t % every == 0
                record = jax.tree.map(lambda r, n: jnp.where(keep, n, r), record, now)
                return (state, record), None

            def interval(carry, k):
                ts = k * every + jnp.arange(every, dtype=jnp.int32)
                (carry, record), _ = jax.lax.scan(inner, (carry, blank), ts)
                return carry, record

            grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, policy.grads.storage_dtype), params)
            blank = (params, state, grads0)
            perm0 = order.permutation(keys.data, 0) if not order.full_batch else jnp.zeros(0)
            ks = jnp.arange(steps // every, dtype=jnp.int32)
            return jax.lax.scan(interval, (params, state, perm0), ks)[1]

        return jax.jit(run)

    key = (id(prob), _spec_key(spec), policy, plan)
    return _cached(_VISIT, key, make, (prob, spec))


def _visit(problem, spec, policy, seed, steps, batch_size, every) -> Visited:
    """Stacked (params, state, grads) with a leading axis over the recorded steps."""
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    for name, value in (("steps", steps), ("every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if steps % every:
        raise ValueError(f"every={every} must divide steps={steps}")
    n = prob.n_train
    full = prob.full_batch or batch_size is None or batch_size >= n
    order = step.BatchOrder(n, n if full else int(batch_size))
    step.check_policy(policy, spec, prob.init)
    policy.warn_hparams(step.numeric_hparams(spec))
    train = tuple(
        jnp.asarray(x, policy.compute_dtype)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
        else jnp.asarray(x)
        for x in prob.train
    )
    run = _runner(prob, spec, policy, (steps, every, order))
    return run(jax.random.key(seed), train)


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

    The run computes as the engine does: params stored in the params format; at step t,
    g = round_grads(grad loss(to_compute(params), batch_t)), (u, state) = update(g, state),
    state rounded to its formats, params = fl(params + u). Seed s gives the engine's
    initialisation and batch order (epoch permutations drawn from the seed); ``batch_size=None``
    is full batch. The run is one compiled ``lax.scan``.

    Args:
      problem: a Problem or problem spec.
      spec: optimizer spec.
      precision: precision spec or policy (round to nearest, no Kahan).
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


def _mapped(fn, policy: Precision, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
    """fl_p(fn(params, state)) for a stack of states: the map applied in the wide dtype, then
    params rounded to the params format and the state to its formats.

    The map runs eagerly: its few products and quotients per leaf are exact IEEE operations
    either way, and a compiled program per map (two per pair) cost more than every defect's
    arithmetic. The rounding, op by op eagerly slow, is one compiled program per policy (and
    state layout), shared by every map into that layout.
    """
    wide = jax.vmap(fn)(_widen(params), _widen(state))
    return _rounder(policy)(*wide)


def _rounder(policy: Precision):
    """jit of (params, state) -> (params in the params format, state in its formats)."""

    def make():
        return jax.jit(lambda params, state: (policy.cast_params(params),
                                              policy.round_state(state)))  # fmt: skip

    return _cached(_ROUND, (policy,), make, ())


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


def _direction(visited: Visited, step_src, step_dst, phi, policy, fields: set[str]) -> list[float]:
    """Per visited state s of the source: ||U_dst(phi(s), g) - phi(U_src(s, g))|| / ||...||,
    ``fields`` being the slots the map keeps."""
    params, state, grads = visited
    params_src, state_src = step_src(params, state, grads)
    want = _mapped(phi, policy, params_src, state_src)
    got = step_dst(*_mapped(phi, policy, params, state), grads)
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
      precision: precision spec or policy (round to nearest, no Kahan).
      smap: the map A -> B; default: the registered exact map (:func:`find_map`), else one
        fitted by :func:`fit_map` on the visited states of A and B of matched runs (same seed,
        same batches), at the same steps the defect is measured on.
      family: the fitted map's family, ``'scalar'`` or ``'diagonal'``.
      visited: A's and B's visited states from matched runs, each ``(params, state, grads)``
        stacked along a leading axis (``TrainResult.visited`` of a ``train(visit_every=...)``);
        default: run them here with the settings below.
      seed, steps, batch_size, every: the runs when ``visited`` is not given (see
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
    if smap is None:
        smap = find_map(spec_a, spec_b) or _fitted(visit_a, visit_b, family)
    inverse = smap.inverse()
    step_a, step_b = _stepper(spec_a, policy), _stepper(spec_b, policy)
    ab = _direction(visit_a, step_a, step_b, smap.phi, policy, set(smap.scales))
    ba = _direction(visit_b, step_b, step_a, inverse.phi, policy, set(inverse.scales))
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
