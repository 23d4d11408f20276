"""Which norm is an optimizer doing steepest descent in? Measured on its first step.

The optimizer's first update from a fresh state is fed random Gaussian gradient matrices (and,
when a problem is given, real gradients of that problem at its initial parameters). Its direction
-u is compared, for every norm of :data:`~optimorph.norms.dualizers.NORMS`, with that norm's
dualizer of the gradient (matrices read in ``layout``, :mod:`optimorph.norms.layout`): the cosine
and the relative defect ||d/||d|| - D/||D|||| (Frobenius), worst case over the samples.

The rule, fixed before any optimizer was measured:

* the best norm is the one with the largest worst-case cosine;
* it is named **exactly** when its worst-case defect is within a few units of the compute
  dtype's roundoff (``tolerance``);
* else **approximately** when its worst-case cosine is at least :data:`MIN_COSINE` (0.95) and
  every norm whose dualizer points elsewhere is at least :data:`MIN_MARGIN` (0.02) lower: a
  direction halfway between two dualizers is close to both and the same as neither;
* else **none of the named norms** (``best`` is ``None``); the closest norm and its cosine are
  still reported.

Norms *tie* only when their dualizers point the same way on every sample (cosine between the
two dualizers within the tolerance of 1: linf and l1_to_linf are both sign(G)), never because
an update is equally far from both.

>>> import jax; jax.config.update("jax_enable_x64", True)
>>> which_norm("adam(lr=0.1, b1=0, b2=0, eps=0)").best
'linf'
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph.norms.dualizers import NORMS
from optimorph.norms.layout import DEFAULT_LAYOUT, check_layout

__all__ = ["NormMatch", "Identification", "which_norm", "PREFERENCE", "MIN_COSINE", "MIN_MARGIN"]

PREFERENCE = ("l2", "linf", "l1", "spectral", "l1_to_l2", "l2_to_linf", "l1_to_linf", "rms_to_rms",
              "l1_to_rms")  # fmt: skip
MIN_COSINE = 0.95  # an approximate match: worst-case cosine to the best dualizer at least this
MIN_MARGIN = 0.02  # ... and every norm with another direction at least this much lower


@dataclasses.dataclass(frozen=True)
class NormMatch:
    """How far an update direction is from one norm's dualizer (worst case over samples)."""

    norm: str
    cosine: float  # min over samples of cos(d, dualize(g))
    defect: float  # max over samples of ||d/|d| - D/|D|||


@dataclasses.dataclass(frozen=True)
class Identification:
    """The matches for every norm, best first, and the verdict.

    ``best`` is the named norm, or ``None`` when the rule names none (``closest`` is then the
    norm with the largest worst-case cosine, ``best_cosine`` that cosine).
    """

    optimizer: str
    matches: list[NormMatch]
    best: str | None
    exact: bool
    tolerance: float
    samples: int
    same_direction: list[str] = dataclasses.field(default_factory=list)
    closest: str = ""
    best_cosine: float = float("nan")
    reason: str = ""
    layout: str = DEFAULT_LAYOUT

    @property
    def verdict(self) -> str:
        """One sentence: the norm (exactly / approximately) or none, with the best cosine."""
        also = f" (same direction: {', '.join(self.same_direction)})" if self.same_direction else ""
        cos = f"worst-case cosine {self.best_cosine:.4f} over {self.samples} gradients"
        if self.best is None:
            return (f"{self.optimizer}: none of the named norms ({self.reason}; closest "
                    f"{self.closest}{also}, {cos})")  # fmt: skip
        how = "exactly" if self.exact else "approximately (not to rounding)"
        return f"{self.optimizer}: steepest descent under {self.best}{also}, {how} ({cos})"

    def table(self) -> list[dict]:
        return [dataclasses.asdict(m) for m in self.matches]


def which_norm(
    optimizer: Any,
    *,
    shapes: tuple[tuple[int, int], ...] = ((8, 5), (6, 6), (4, 9)),
    samples: int = 8,
    problem: Any = None,
    seed: int = 0,
    layout: str = DEFAULT_LAYOUT,
) -> Identification:
    """Identify the norm of ``optimizer``'s first step (see the module docstring for the rule).

    Args:
      optimizer: a spec string, OptimizerSpec or optax transformation.
      shapes: shapes of the random gradient matrices (tall, square and wide).
      samples: random gradients per shape.
      problem: a problem (spec or Problem) whose real gradients at ``samples`` initialisations are
        added (each 2-D parameter's gradient is one sample).
      seed: seed of the random gradients.
      layout: how the optimizer stores a weight matrix (``in_out``: optimorph's models).
    """
    from optimorph.optimizers import resolve

    check_layout(layout)
    spec = resolve(optimizer)
    tx = spec.build()
    dtype = jnp.result_type(float)
    rng = np.random.default_rng(seed)
    grads = [jnp.asarray(rng.standard_normal(shape), dtype) for shape in shapes
             for _ in range(samples)]  # fmt: skip
    if problem is not None:
        grads += _problem_gradients(problem, samples, dtype)
    directions = []
    for g in grads:
        params = {"w": jnp.zeros_like(g)}
        updates, _ = tx.update({"w": g}, tx.init(params), params)
        directions.append(-jnp.asarray(updates["w"], dtype))
    targets = {e.name: [e.dualize_of(g, layout) for g in grads] for e in NORMS.values()}
    matches = []
    for name, dualized in targets.items():
        cosines, defects = [], []
        for d, target in zip(directions, dualized, strict=True):
            cosines.append(_cosine(d, target))
            defects.append(_defect(d, target))
        matches.append(NormMatch(name, min(cosines), max(defects)))
    tolerance = 64 * float(jnp.finfo(dtype).eps) * max(max(s) for s in shapes)
    order = {name: i for i, name in enumerate(PREFERENCE)}
    matches.sort(key=lambda m: (-round(m.cosine, 6), round(m.defect, 6), order.get(m.norm, 99)))
    top = matches[0]

    def same_direction(a: str, b: str) -> bool:
        return all(_cosine(x, y) >= 1 - tolerance for x, y in
                   zip(targets[a], targets[b], strict=True))  # fmt: skip

    ties = [m.norm for m in matches[1:] if same_direction(top.norm, m.norm)]
    others = [m for m in matches[1:] if m.norm not in ties]
    exact = top.defect <= tolerance
    reason = ""
    if not exact and top.cosine < MIN_COSINE:
        reason = f"best worst-case cosine {top.cosine:.4f} < {MIN_COSINE}"
    elif not exact and others and top.cosine - others[0].cosine < MIN_MARGIN:
        reason = (f"{top.norm} ({top.cosine:.4f}) and {others[0].norm} ({others[0].cosine:.4f}) "
                  f"are within {MIN_MARGIN} of each other")  # fmt: skip
    return Identification(
        optimizer=spec.canonical,
        matches=matches,
        best=None if reason else top.norm,
        exact=exact,
        tolerance=tolerance,
        samples=len(grads),
        same_direction=ties,
        closest=top.norm,
        best_cosine=top.cosine,
        reason=reason,
        layout=layout,
    )


def _cosine(a: jax.Array, b: jax.Array) -> float:
    """cos(a, b); -1 when either is zero or not finite (no direction to compare)."""
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    if na == 0 or nb == 0 or not (jnp.isfinite(na) and jnp.isfinite(nb)):
        return -1.0
    return float(jnp.vdot(a, b) / (na * nb))


def _defect(a: jax.Array, b: jax.Array) -> float:
    """||a/|a| - b/|b||| (Frobenius); inf when either has no direction (zero or not finite),
    so an exactly opposite direction reads 2, not inf."""
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    if na == 0 or nb == 0 or not (jnp.isfinite(na) and jnp.isfinite(nb)):
        return np.inf
    return float(jnp.linalg.norm(a / na - b / nb))


def _problem_gradients(problem: Any, samples: int, dtype) -> list[jax.Array]:
    from optimorph.problems import Problem
    from optimorph.problems import problem as make_problem

    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    batch = tuple(jnp.asarray(a, dtype) if np.asarray(a).dtype.kind == "f" else jnp.asarray(a)
                  for a in prob.train)  # fmt: skip
    out = []
    for k in range(samples):
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), prob.init(jax.random.key(k)))
        grads = jax.grad(prob.loss)(params, batch)
        out += [g for g in jax.tree.leaves(grads) if g.ndim == 2 and min(g.shape) > 1]
    return out
