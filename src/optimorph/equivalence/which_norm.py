"""Which norm is an optimizer doing steepest descent in? Measured on its first step.

The optimizer's first update from a fresh state is fed random Gaussian gradient matrices (and,
when a problem is given, real gradients of that problem at its initial parameters). Its direction
-u is compared, for every norm of :data:`~optimorph.norms.dualizers.NORMS`, with that norm's
dualizer of the gradient: the cosine and the relative defect ||d/||d|| - D/||D|||| (Frobenius),
worst case over the samples. The best match has the largest worst-case cosine; it is *exact*
when the defect is within a few units of the compute dtype's roundoff.

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

__all__ = ["NormMatch", "Identification", "which_norm", "PREFERENCE"]

PREFERENCE = ("l2", "linf", "l1", "spectral", "l1_to_l2", "l2_to_linf", "l1_to_linf", "rms_to_rms",
              "l1_to_rms")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NormMatch:
    """How far an update direction is from one norm's dualizer (worst case over samples)."""

    norm: str
    cosine: float  # min over samples of cos(d, dualize(g))
    defect: float  # max over samples of ||d/|d| - D/|D|||


@dataclasses.dataclass(frozen=True)
class Identification:
    """The matches for every norm, best first, and the verdict."""

    optimizer: str
    matches: list[NormMatch]
    best: str
    exact: bool
    tolerance: float
    samples: int
    same_direction: list[str] = dataclasses.field(default_factory=list)

    def table(self) -> list[dict]:
        return [dataclasses.asdict(m) for m in self.matches]


def which_norm(
    optimizer: Any,
    *,
    shapes: tuple[tuple[int, int], ...] = ((8, 5), (6, 6), (4, 9)),
    samples: int = 8,
    problem: Any = None,
    seed: int = 0,
) -> Identification:
    """Identify the norm of ``optimizer``'s first step (see the module docstring).

    Args:
      optimizer: a spec string, OptimizerSpec or optax transformation.
      shapes: shapes of the random gradient matrices (tall, square and wide).
      samples: random gradients per shape.
      problem: a problem (spec or Problem) whose real gradients at ``samples`` initialisations are
        added (each 2-D parameter's gradient is one sample).
      seed: seed of the random gradients.
    """
    from optimorph.optimizers import resolve

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
    matches = []
    for entry in NORMS.values():
        cosines, defects = [], []
        for g, d in zip(grads, directions, strict=True):
            target = entry.dualize(g)
            nd, nt = jnp.linalg.norm(d), jnp.linalg.norm(target)
            if nd == 0 or nt == 0 or not jnp.isfinite(nd):
                cosines.append(-1.0)
                defects.append(np.inf)
                continue
            cosines.append(float(jnp.vdot(d, target) / (nd * nt)))
            defects.append(float(jnp.linalg.norm(d / nd - target / nt)))
        matches.append(NormMatch(entry.name, min(cosines), max(defects)))
    tolerance = 64 * float(jnp.finfo(dtype).eps) * max(max(s) for s in shapes)
    # Norms whose dualizers point the same way (linf and l1_to_linf: sign(G); spectral and
    # rms_to_rms: U V^T up to a factor) tie; the simpler, earlier-listed one is named.
    order = {name: i for i, name in enumerate(PREFERENCE)}
    matches.sort(key=lambda m: (-round(m.cosine, 6), round(m.defect, 6), order.get(m.norm, 99)))
    best = matches[0]
    ties = [m.norm for m in matches[1:] if abs(m.cosine - best.cosine) <= tolerance
            and abs(m.defect - best.defect) <= tolerance]  # fmt: skip
    return Identification(
        optimizer=spec.canonical,
        matches=matches,
        best=best.norm,
        exact=best.defect <= tolerance,
        tolerance=tolerance,
        samples=len(grads),
        same_direction=ties,
    )


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
