"""Why two implementations of "the same" optimizer part: the step, the slot and a named cause.

For a pair that is not p-equivalent, :func:`diagnose` says

* **where they part**: both optimizers train the problem from the same initialisation on the
  same batches at precision p (the engine's step, :func:`defect.visited_states`), and each
  state slot is compared, aligned by role (Adam's first moment is ``m`` in optimorph, ``mu`` in
  optax, ``exp_avg`` in torch; see :data:`ROLES`). The distance is in ulps of the format,
  ``|a - b| / (2 u max(|a|, |b|))``, maximised over coordinates; they part at the first step
  where a slot exceeds ``part_ulps`` = 1024 ulps, or a relative difference of 25% in formats
  too narrow for that (bf16: 32 ulps; a value against zero is 1 / (2u) ulps), the state's
  slots before the parameters (the update computes them first). 1024 is above what storing a
  hyperparameter in the format does by itself: 1 - fl(0.999) is off by ~500 ulps of 0.001, so
  optimorph's adam (b2 stored in fp32) and torch's (a Python float) differ in v by ~110 ulps
  from step 1 on, equivalent all the same. The per-slot distance over steps is returned;
* **the most likely cause**, from :data:`CAUSES`, a registry of the known differences between
  implementations. Each entry is a small predicate that feeds both optimizers the same crafted
  gradients that separate the two conventions (a zero gradient, a gradient of 1e-6, a constant
  gradient for ten steps, a counter at 2^24) and reads their steps and state; the entries that
  fire are ranked by whether their slot is the slot where the pair parts, then by registry order.

The crafted run: four independent coordinates, parameters ``(0.5, -1, 2, 1)`` and a constant
gradient ``(1, 1e-6, 0, -0.01)``: a large, a tiny, a zero and a moderate gradient, stepped with
the engine's rounded step (:func:`defect.one_step`) at float64 (where only algorithms differ) and
at the compared precision (where formats do).

>>> import jax; jax.config.update("jax_enable_x64", True)
>>> d = diagnose("rmsprop(lr=1e-3)", "rmsprop(lr=1e-3, eps_inside=true)",
...              "two-moons(n=32, widths=[4], test_n=32)", "fp32", steps=8)
>>> d.step, d.slot, d.cause
(1, 'params', 'eps-sqrt')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph.engine import step as step_lib
from optimorph.equivalence import defect as defect_lib
from optimorph.equivalence.maps import Slots
from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.precision import precision as make_precision
from optimorph.problems import Problem
from optimorph.problems import problem as make_problem

__all__ = ["ROLES", "CAUSES", "Cause", "Trace", "Diagnosis", "cause", "diagnose", "attach"]

# A slot's role, whatever an implementation calls it.
ROLES: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "m": ("m", "mu", "exp_avg", "momentum_buffer", "trace"),
    "v": ("v", "nu", "exp_avg_sq", "square_avg"),
    "acc": ("sum_sq", "sum_of_squares", "sum"),
}
PARAMS0 = (0.5, -1.0, 2.0, 1.0)
ZEROS = (0.0, 0.0, 0.0, 0.0)
GRAD = (1.0, 1e-6, 0.0, -1e-2)  # large, tiny, zero, moderate
LARGE, TINY, ZERO = 0, 1, 2
CRAFTED_STEPS = 10


# ---------------------------------------------------------------------------------------------
# Crafted runs


@dataclasses.dataclass(frozen=True)
class Trace:
    """One optimizer stepped on the crafted gradient.

    Attributes:
      spec: the optimizer.
      precision: the policy's name.
      updates: ``[T, 4]`` parameter changes of steps 1..T.
      slots: role -> ``[T + 1, 4]`` values (row 0: the initial state), for the roles it has.
      names: role -> the implementation's name of that slot.
      fields: every slot name of its state.
      counts: the counter after each step ``[T + 1]`` (None without one).
    """

    spec: OptimizerSpec
    precision: str
    updates: np.ndarray
    slots: dict[str, np.ndarray]
    names: dict[str, str]
    fields: tuple[str, ...]
    counts: np.ndarray | None

    def rel_update(self, coord: int, t: int = 0) -> float:
        """|update| of step t + 1 at ``coord`` relative to that of the large gradient."""
        big = abs(self.updates[t, LARGE])
        return abs(self.updates[t, coord]) / big if big > 0 else math.nan


def _draws(policy) -> jax.Array | None:
    """The rounding key of a crafted run (seed 0's); None when the policy draws nothing."""
    return step_lib.seed_keys(0).rounding if policy.keyed else None


def _start(spec: OptimizerSpec, policy, count: int | None = None, at: tuple = PARAMS0):
    params = policy.cast_params({"w": jnp.asarray(at, jnp.float64)})
    tx = spec.build(step_lib.stored_hparams(spec, policy))
    state = policy.round_state(tx.init(policy.to_compute(params)), _draws(policy))
    if count is not None:
        view = Slots(state)
        if "count" not in view.names:
            return params, None
        leaf = view.get(state, "count")[0]
        state = view.build({"count": [jnp.asarray(count, leaf.dtype)]}, state)
    return params, state


def _values(view: Slots, state, name: str) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in view.get(state, name)])


_TRACES: dict = {}


def _trace_cached(spec: OptimizerSpec, precision: str, steps: int, at: tuple) -> Trace:
    key = (spec.canonical, id(spec.custom), precision, steps, at)
    if key not in _TRACES:
        if len(_TRACES) > 64:
            _TRACES.clear()
        _TRACES[key] = (spec, _make_trace(spec, precision, steps, at))  # spec keeps id(custom)
    return _TRACES[key][1]


def _make_trace(spec: OptimizerSpec, precision: str, steps: int, at: tuple) -> Trace:
    policy = make_precision(precision)
    params, state = _start(spec, policy, at=at)
    key = _draws(policy)
    grads = policy.round_grads({"w": jnp.asarray(GRAD, jnp.float64)}, key)
    view = Slots(state)
    names = {
        role: next(n for n in view.names if n in aliases)
        for role, aliases in ROLES.items()
        if any(n in aliases for n in view.names)
    }
    rows: dict[str, list] = {r: [_values(view, state, n)] for r, n in names.items()}
    updates = []
    for t in range(steps):
        new_params, state = defect_lib.one_step(spec, policy, params, state, grads, t=t,
                                                rounding_key=key)  # fmt: skip
        new, old = (np.asarray(x["w"], np.float64) for x in (new_params, params))
        with np.errstate(invalid="ignore"):  # inf - inf: a step that broke the parameters
            updates.append(new - old)
        params = new_params
        for r, n in names.items():
            rows[r].append(_values(view, state, n))
    counts = np.array([row[0] for row in rows.pop("count")]) if "count" in rows else None
    names.pop("count", None)
    return Trace(
        spec, policy.name, np.array(updates), {r: np.array(v) for r, v in rows.items()},
        names, tuple(view.names), counts,
    )  # fmt: skip


def trace(
    spec: Any, precision: str = "fp64", steps: int = CRAFTED_STEPS, at: tuple = PARAMS0
) -> Trace:
    """``spec`` stepped ``steps`` times on the crafted gradient at ``precision``, from the
    parameters ``at`` (from zeros, each step's update is stored exactly as the optimizer
    rounded it, not absorbed into the parameters' own rounding)."""
    return _trace_cached(resolve(spec), str(make_precision(precision)), steps, tuple(at))


def count_after(spec: Any, start: int) -> int | None:
    """The counter after one step from a state whose counter is ``start`` (None: no counter)."""
    spec, policy = resolve(spec), make_precision("fp64")
    params, state = _start(spec, policy, start)
    if state is None:
        return None
    grads = {"w": jnp.asarray(GRAD, jnp.float64)}
    _, new = defect_lib.one_step(spec, policy, params, state, grads)
    view = Slots(new)
    return int(np.asarray(view.get(new, "count")[0]))


# ---------------------------------------------------------------------------------------------
# The registry of known differences


@dataclasses.dataclass(frozen=True)
class Cause:
    """A known difference between implementations.

    Attributes:
      name: short key (``eps-sqrt``).
      summary: the convention fork in one line, with the implementations on each side.
      slot: the role of the slot where it shows first (``params``, ``m``, ``v``, ``acc``,
        ``count``).
      check: ``check(a, b, context) -> evidence or None``: the predicate. ``context`` holds the
        compared precision (``"precision"``) and run length (``"steps"``).
      kind: ``"algorithm"`` (the two compute different things, seen at float64) or
        ``"precision"`` (the same algorithm rounded differently); an algorithm cause that fires
        ranks first, since it explains a difference at every precision.
    """

    name: str
    summary: str
    slot: str
    check: Callable[[OptimizerSpec, OptimizerSpec, dict], str | None]
    kind: str = "algorithm"


CAUSES: list[Cause] = []


def cause(name: str, summary: str, slot: str, kind: str = "algorithm"):
    """Register a predicate ``(a, b, context) -> evidence | None`` as a known cause."""

    def wrap(check):
        CAUSES.append(Cause(name, summary, slot, check, kind))
        return check

    return wrap


def _close(x: float, y: float, rtol: float = 1e-9) -> bool:
    return abs(x - y) <= rtol * max(abs(x), abs(y))


@cause(
    "adagrad-initial",
    "Adagrad's accumulator starts at 0.1 with eps 1e-7 inside the rsqrt (optax) vs at 0 with "
    "eps 1e-10 outside the square root (torch, optimorph's adagrad)",
    "acc",
)
def _adagrad_initial(a, b, context):
    ta, tb = trace(a), trace(b)
    if "acc" not in ta.slots or "acc" not in tb.slots:
        return None
    ia, ib = float(ta.slots["acc"][0, 0]), float(tb.slots["acc"][0, 0])
    if ia == ib:
        return None
    return f"the accumulator starts at {ia:g} in A and {ib:g} in B"


@cause(
    "eps-sqrt",
    "eps inside the square root, g / sqrt(v + eps) (optax.rmsprop, optax.adagrad), vs outside, "
    "g / (sqrt(v) + eps) (torch, optimorph's default; optax #532)",
    "params",
)
def _eps_sqrt(a, b, context):
    if _numbers_differ(a, b) is not None:  # one implementation, other numbers: one eps placement
        return None
    ta, tb = trace(a), trace(b)
    ra, rb = ta.rel_update(TINY), tb.rel_update(TINY)
    if not (np.isfinite(ra) and np.isfinite(rb)) or (ra > 0.3) == (rb > 0.3):
        return None
    if min(ra, rb) > 0.1:
        return None
    inside = "B" if rb < ra else "A"
    return (
        f"a gradient of 1e-6 moves A by {ra:.3g} and B by {rb:.3g} of the step a gradient of 1 "
        f"makes: {inside} adds eps inside the square root (its step is ~ g / sqrt(eps) for "
        "|g| << sqrt(eps))"
    )


def _decay_rate(t: Trace) -> float:
    """-u / theta at the zero-gradient coordinate, first step (lr * lambda when decoupled)."""
    return -t.updates[0, ZERO] / PARAMS0[ZERO]


@cause(
    "coupled-decay",
    "weight decay coupled as L2, g + lambda theta through the moments (torch Adam(weight_decay=)), "
    "vs decoupled, theta -= eta lambda theta (AdamW)",
    "m",
)
def _coupled(a, b, context):
    ta, tb = trace(a), trace(b)
    if "m" not in ta.slots or "m" not in tb.slots:
        return None
    ma, mb = ta.slots["m"][1, ZERO], tb.slots["m"][1, ZERO]
    if (ma != 0) == (mb != 0):
        return None
    coupled, decoupled = ("A", tb) if ma != 0 else ("B", ta)
    if _decay_rate(decoupled) == 0:
        return None  # the other side does not decay at all: a different cause
    return (
        f"at a zero gradient {coupled}'s first moment becomes {ma if ma else mb:.3g} (the decay "
        f"went into the moments), the other's stays 0 and theta shrinks by "
        f"{_decay_rate(decoupled):.3g} per step"
    )


@cause(
    "decay-rate",
    "decoupled weight decay of a different strength: optax.adamw's default weight_decay is 1e-4, "
    "torch.optim.AdamW's (and optimorph's adamw) 1e-2",
    "params",
)
def _decay_amount(a, b, context):
    ta, tb = trace(a), trace(b)
    if any(t.slots.get("m", np.zeros((2, 4)))[1, ZERO] != 0 for t in (ta, tb)):
        return None  # coupled decay: see coupled-decay
    da, db = _decay_rate(ta), _decay_rate(tb)
    if _close(da, db, 1e-6) or (da == 0 and db == 0):
        return None
    return (
        f"at a zero gradient theta shrinks by a factor {da:.3g} per step in A and {db:.3g} in B "
        f"(lr x weight_decay; ratio {da / db if db else math.inf:.3g})"
    )


def _ema_coefficient(t: Trace, role: str) -> float | None:
    """b from x_2 / x_1 - 1 under a constant gradient (x_1 = (1-b) g, x_2 = (1+b)(1-b) g)."""
    if role not in t.slots or t.slots[role][1, LARGE] == 0:
        return None
    return float(t.slots[role][2, LARGE] / t.slots[role][1, LARGE] - 1)


@cause(
    "ema-rate",
    "a different EMA coefficient for a moment, usually a default: torch RMSprop alpha=0.99 vs "
    "optax.rmsprop decay=0.9; betas (0.9, 0.999) vs a changed b1 or b2",
    "v",
)
def _ema_rate(a, b, context):
    ta, tb = trace(a), trace(b)
    said = []
    for role in ("m", "v"):
        ba, bb = _ema_coefficient(ta, role), _ema_coefficient(tb, role)
        if ba is not None and bb is not None and abs(ba - bb) > 1e-3:
            said.append(f"{role}: A decays by {ba:.4g}, B by {bb:.4g} per step")
    return "; ".join(said) or None


@cause(
    "nadam-schedule",
    "NAdam's momentum schedule mu_t = b1 (1 - 0.5 * 0.96^(0.004 t)) (torch, momentum_decay=4e-3) "
    "vs a constant b1 in the Nesterov form (optax.nadam)",
    "params",
)
def _nadam(a, b, context):
    ta, tb = trace(a), trace(b)
    has = ["mu_product" in t.fields for t in (ta, tb)]
    if has[0] == has[1]:
        return None
    ua, ub = ta.updates[0, LARGE], tb.updates[0, LARGE]
    if _close(ua, ub, 1e-6):
        return None
    who = "A" if has[0] else "B"
    return (
        f"{who} keeps torch's mu_product; with a gradient of 1 the first steps are {ua:.4g} (A) "
        f"and {ub:.4g} (B)"
    )


def _rectified_from(t: Trace) -> int | None:
    """The first step whose update departs from the unrectified m_hat step (constant gradient:
    |u| stays at its first value until RAdam's rectification turns on), 1-based."""
    first = abs(t.updates[0, LARGE])
    for k in range(1, len(t.updates)):
        if not _close(abs(t.updates[k, LARGE]), first, 1e-6):
            return k + 1
    return None


@cause(
    "radam-threshold",
    "RAdam's rectification threshold: rho_t > 5 (torch and optax code) vs rho_t > 4 (the paper)",
    "params",
)
def _radam(a, b, context):
    ka, kb = _rectified_from(trace(a)), _rectified_from(trace(b))
    if ka is None or kb is None or ka == kb or min(ka, kb) < 3:
        return None
    return f"under a constant gradient A rectifies from step {ka}, B from step {kb}"


@cause(
    "float32-step",
    "torch keeps the step counter as a float32 tensor, exact to 2^24 and stuck there; optimorph "
    "and optax count in int32 (and a bf16 counter stops at 256)",
    "count",
)
def _float32_step(a, b, context):
    if context.get("steps", 0) <= 2**24:
        return None  # the counters agree over the whole run
    ca, cb = count_after(a, 2**24), count_after(b, 2**24)
    if ca is None or cb is None or ca == cb:
        return None
    return f"from a counter at 2^24 one step gives {ca} in A and {cb} in B"


@cause(
    "hparams-format",
    "hyperparameters stored in the precision's hparams format (optimorph's engine, "
    "optax.inject_hyperparams: bf16 b2 = 0.999 becomes 1, optax #1414) vs Python floats (torch, "
    "optax without inject_hyperparams)",
    "v",
    kind="precision",
)
def _hparams(a, b, context):
    policy = make_precision(context["precision"])
    said = [policy.check_hparams(step_lib.numeric_hparams(s)) for s in (a, b)]
    if said[0] == said[1]:
        return None
    return "; ".join(f"{w}: {', '.join(m)}" for w, m in zip("AB", said, strict=True) if m)


@cause(
    "wide-arithmetic",
    "the step computed in float32 from half-precision parameters and state (torch's fused Adam, "
    "as AMP's opmath) vs in the half-precision format itself, where eps = 1e-8 and a tiny "
    "second moment round to 0 and the step to inf/NaN",
    "params",
    kind="precision",
)
def _wide_arithmetic(a, b, context):
    p = context["precision"]
    u = make_precision(p).unit_roundoff
    if u <= 2.0**-24:
        return None  # fp32 and wider: no wider format to compute in here
    exact_a, exact_b = trace(a, at=ZEROS).updates[0], trace(b, at=ZEROS).updates[0]
    if not (np.isfinite(exact_a).all() and np.allclose(exact_a, exact_b, rtol=1e-10, atol=0)):
        return None  # different algorithms, or one that breaks at float64 too
    ua, ub = trace(a, p, at=ZEROS).updates[0], trace(b, p, at=ZEROS).updates[0]
    finite_a, finite_b = np.isfinite(ua).all(), np.isfinite(ub).all()
    if finite_a == finite_b:
        return None
    wide, narrow, steps, broken = ("A", "B", ua, ub) if finite_a else ("B", "A", ub, ua)
    if not np.all(np.abs(steps - exact_a) <= 4 * u * np.abs(exact_a)):
        return None  # finite, but not the float64 step rounded once: not wider arithmetic
    k = int(np.argmax(~np.isfinite(broken)))
    return (
        f"at a gradient of {GRAD[k]:g} the first step at {p} is {broken[k]:.4g} in {narrow} and "
        f"{steps[k]:.4g} in {wide} (float64: {exact_a[k]:.4g}); {wide}'s step is the float64 one "
        f"to 4 ulps of {p} at every coordinate: it computes in a wider format"
    )


@cause(
    "bias-correction-dtype",
    "bias corrections 1 - b^t as float64 scalars applied in float32 arithmetic (torch) vs cast "
    "to the moment's dtype before dividing (optax, optimorph at low precision)",
    "params",
    kind="precision",
)
def _bias_dtype(a, b, context):
    p = context["precision"]
    if make_precision(p).unit_roundoff <= 2.0**-53:
        return None
    wide_a, wide_b = trace(a), trace(b)
    if not np.allclose(wide_a.updates, wide_b.updates, rtol=1e-10, atol=0):
        return None  # different algorithms: not a rounding question
    # From zero parameters: the step is stored as computed, not rounded onto theta's grid,
    # where a one-ulp difference in the update would vanish.
    ta, tb = trace(a, p, at=ZEROS), trace(b, p, at=ZEROS)
    if not all(r in ta.slots and r in tb.slots for r in ("m", "v")):
        return None
    same = all(np.array_equal(ta.slots[r][1], tb.slots[r][1]) for r in ("m", "v"))
    ua, ub = ta.updates[0], tb.updates[0]
    if not same or np.array_equal(ua, ub, equal_nan=True):
        return None
    if not np.array_equal(np.isfinite(ua), np.isfinite(ub)):
        return None  # one side's step breaks where the other's does not: see wide-arithmetic
    differ = np.flatnonzero(~((ua == ub) | (np.isnan(ua) & np.isnan(ub))))
    with np.errstate(invalid="ignore"):
        gap = np.nan_to_num(np.abs(ua[differ] - ub[differ]), nan=0.0, posinf=0.0)
    k = int(differ[np.argmax(gap)])  # where the steps differ most (finite differences first)
    return (
        f"at {p} both keep the same m and v bit for bit after step 1, but the steps differ "
        f"(at a gradient of {GRAD[k]:g}: {ta.updates[0, k]:.9g} vs {tb.updates[0, k]:.9g}); at "
        "fp64 they agree"
    )


def _numbers_differ(a, b) -> list[str] | None:
    """The hyperparameters two specs of one registered optimizer set to different numbers, when
    nothing else differs (no flag, no string); None otherwise."""
    if a.entry is None or a.entry is not b.entry:
        return None
    differ = [k for k in a.values if a.values[k] != b.values[k]]
    flags = (bool, str)
    if any(isinstance(a.values[k], flags) or isinstance(b.values[k], flags) for k in differ):
        return None
    return differ


# Registered last: a named convention that fires too (ema-rate, radam-threshold) says more.
@cause(
    "hparam-value",
    "the same optimizer with another hyperparameter value: one computation on other numbers",
    "params",
)
def _hparam_value(a, b, context):
    differ = _numbers_differ(a, b)
    if not differ:
        return None
    named = "; ".join(f"{k} = {a.values[k]!r} in A, {b.values[k]!r} in B" for k in differ)
    return f"both are {a.entry.name}: {named}"


# ---------------------------------------------------------------------------------------------
# Where the pair parts, and the diagnosis


@dataclasses.dataclass
class Diagnosis:
    """Where two optimizers part at a precision and the most likely named cause.

    Attributes:
      step: the first step at which a slot differs by more than ``part_ulps`` (None: not
        within the steps looked at).
      slot: that slot's role (``params``, ``m``, ``v``, ``acc``, ``count``), with
        ``slot_names`` giving each side's own name for it.
      ulps: the distance there.
      cause, summary, evidence: the most likely cause (None when no entry fired).
      also: the other causes that fired, ``[(name, evidence)]``.
      ulps_per_slot: role -> per-step maximum distance in ulps (step 0 first).
      limit: the distance in ulps above which a slot counts as parted at this precision.
    """

    a: str
    b: str
    precision: str
    step: int | None
    slot: str | None
    slot_names: tuple[str, str] | None
    ulps: float
    cause: str | None
    summary: str
    evidence: str
    also: list[tuple[str, str]]
    ulps_per_slot: dict[str, list[float]]
    limit: float = math.nan

    def sentence(self) -> str:
        """One clause for a verdict's reason."""
        where = (
            f"they part at step {self.step} in {self._slot_text()} ({self.ulps:.3g} ulps)"
            if self.step is not None
            else "no slot parts by more than the threshold in the steps looked at"
        )
        if self.cause is None:
            return f"{where}; no known cause matched"
        return f"{where}; likely cause [{self.cause}]: {self.summary} ({self.evidence})"

    def _slot_text(self) -> str:
        if self.slot_names and self.slot_names[0] != self.slot_names[1]:
            return f"{self.slot} (A {self.slot_names[0]}, B {self.slot_names[1]})"
        return str(self.slot)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["sentence"] = self.sentence()
        return out


def _ulps(x: np.ndarray, y: np.ndarray, u: float) -> float:
    """max |x - y| / (2 u max(|x|, |y|)) over coordinates; NaN in one only: inf."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        scale = 2 * u * np.maximum(np.abs(x), np.abs(y))
        d = np.where(same, 0.0, np.abs(x - y) / np.where(scale > 0, scale, np.inf))
        d = np.where(same, 0.0, np.where(np.isfinite(x - y), d, np.inf))
    return float(np.max(d)) if d.size else 0.0


def _flat_leaves(leaves) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])


def parting(a: Any, b: Any, problem: Any, precision: str, *, steps: int = 32,
            batch_size: int | None = None, seed: int = 0) -> dict[str, list[float]]:  # fmt: skip
    """Per role (params first), the distance in ulps between A's and B's runs at each step.

    Both train ``problem`` from the same initialisation on the same batches (the engine's
    step); slots are aligned by :data:`ROLES`; roles one side lacks are left out.
    """
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    spec_a, spec_b = resolve(a), resolve(b)
    policy = make_precision(precision)
    u = policy.unit_roundoff
    runs = [
        defect_lib.visited_states(prob, s, policy, seed=seed, steps=steps,
                                  batch_size=batch_size, every=1)  # fmt: skip
        for s in (spec_a, spec_b)
    ]
    view_a, view_b = Slots(runs[0][0][1]), Slots(runs[1][0][1])
    pairs = {"params": None}
    for role, aliases in ROLES.items():
        na = next((n for n in view_a.names if n in aliases), None)
        nb = next((n for n in view_b.names if n in aliases), None)
        if na and nb and role != "count":
            pairs[role] = (na, nb)
    out: dict[str, list[float]] = {r: [] for r in pairs}
    for (pa, sa, _), (pb, sb, _) in zip(runs[0], runs[1], strict=True):
        for role, names in pairs.items():
            if names is None:
                x, y = _flat_leaves(jax.tree.leaves(pa)), _flat_leaves(jax.tree.leaves(pb))
            else:
                x = _flat_leaves(view_a.get(sa, names[0]))
                y = _flat_leaves(view_b.get(sb, names[1]))
            out[role].append(_ulps(x, y, u) if x.shape == y.shape else math.inf)
    out["_names"] = {r: n for r, n in pairs.items() if n}  # type: ignore[assignment]
    return out


def diagnose(
    a: Any,
    b: Any,
    problem: Any,
    precision: str,
    *,
    steps: int = 64,
    batch_size: int | None = None,
    run_steps: int | None = None,
    part_ulps: float = 1024.0,
) -> Diagnosis:
    """Where A and B part at ``precision`` on ``problem`` and the most likely known cause.

    Args:
      a, b: optimizer specs.
      problem: a Problem or problem spec.
      precision: the precision of the verdict.
      steps: training steps looked at for the parting point.
      batch_size: as the comparison's runs (None: full batch).
      run_steps: the comparison's run length (counter causes need it); default ``steps``.
      part_ulps: the distance in ulps above which a slot counts as parted (capped at a
        relative difference of 25%).

    Returns:
      A :class:`Diagnosis`.
    """
    spec_a, spec_b = resolve(a), resolve(b)
    p = str(make_precision(precision))
    dist = parting(spec_a, spec_b, problem, p, steps=steps, batch_size=batch_size)
    names = dist.pop("_names")
    order = [r for r in dist if r != "params"] + ["params"]  # state slots are computed first
    step = slot = None
    ulps = 0.0
    limit = min(part_ulps, 0.25 / (2 * make_precision(p).unit_roundoff))
    for t in range(len(dist["params"])):
        over = [r for r in order if dist[r][t] > limit]
        if over:
            step, slot, ulps = t, over[0], dist[over[0]][t]
            break
    context = {"precision": p, "steps": run_steps or steps}
    fired = []
    for c in CAUSES:
        evidence = c.check(spec_a, spec_b, context)
        if evidence:
            fired.append((c, evidence))
    # Algorithm causes first, then those showing in the slot where the pair parts; registry
    # order next (the sort is stable).
    fired.sort(key=lambda ce: (ce[0].kind != "algorithm", ce[0].slot != slot))
    top = fired[0] if fired else None
    return Diagnosis(
        a=spec_a.text,
        b=spec_b.text,
        precision=p,
        step=step,
        slot=slot,
        slot_names=names.get(slot) if slot else None,
        ulps=ulps,
        cause=top[0].name if top else None,
        summary=top[0].summary if top else "",
        evidence=top[1] if top else "",
        also=[(c.name, e) for c, e in fired[1:]],
        ulps_per_slot={r: [float(x) for x in v] for r, v in dist.items()},
        limit=limit,
    )


def attach(
    comparison: Any,
    problem: Any,
    run: dict,
    pair: tuple[Any, Any] | None = None,
    given: dict[str, Any] | None = None,
) -> Any:
    """Diagnose every decided, non-equivalent verdict of a Comparison in place: its
    ``diagnosis`` (a dict) is set and the reason gains the diagnosis's sentence. ``pair``: the
    two optimizers as given to ``compare``; ``given``: each optimizer as given to ``classes``,
    by its name in the verdicts (a named optax object has no spec to re-read)."""
    prob = None
    for p, verdicts in comparison.pairs.items():
        for v in verdicts:
            if v.equivalent or not v.decided:
                continue
            prob = prob or (problem if isinstance(problem, Problem) else make_problem(problem))
            steps = int(run.get("steps") or 64)
            named = given or {}
            a, b = pair if pair is not None else (named.get(v.a, v.a), named.get(v.b, v.b))
            d = diagnose(a, b, prob, p, steps=min(steps, 64),
                         batch_size=run.get("batch_size"), run_steps=steps)  # fmt: skip
            v.diagnosis = d.as_dict()
            v.reason += f"; {d.sentence()}"
    return comparison
