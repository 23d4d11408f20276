"""Theory checks shown beside the observed defects (DESIGN.md section 3, "Theory checks").

The proposal states two lower bounds on the condition number a state map needs for a first-order
method to simulate another optimizer:

* SignSGD: sign(g) = D g with D = diag(1 / |g_i|), and rescaled to match the step size the
  proposal's bound is kappa >= ||g||_2 / min_i |g_i| on the flattened gradient.
* Newton: H^-1 g needs a preconditioner as ill-conditioned as the Hessian: kappa >= kappa(H).

These functions compute the bounds on measured gradients and parameters, so a report can put the
measured kappa(phi) of a map beside them. A gradient with an exactly zero coordinate gives
``inf`` for the SignSGD bound (sign(0) = 0 cannot be reached by rescaling a nonzero g_i, and
the formula divides by zero): it is reported as inf, not skipped.

>>> import jax.numpy as jnp
>>> signsgd_bound({"w": jnp.array([3.0, -4.0])})  # 5 / 3
1.6666666666666667
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from optimorph.problems import Problem
from optimorph.problems import problem as make_problem

__all__ = ["MAX_HESSIAN_PARAMS", "newton_bound", "newton_bounds", "signsgd_bound", "theory_checks"]

PyTree = Any

MAX_HESSIAN_PARAMS = 2000  # an exact Hessian of 2000 params is 4M entries and ~2000 HVPs


def _flat64(tree: PyTree) -> np.ndarray:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("the gradient has no coordinates")
    return np.concatenate([np.ravel(np.asarray(x).astype(np.float64)) for x in leaves])


def signsgd_bound(grads: PyTree) -> float:
    """The SignSGD bound ||g||_2 / min_i |g_i| on the flattened gradient.

    Args:
      grads: one gradient (a pytree of arrays).

    Returns:
      The bound, >= 1 (sqrt(n) for a gradient of equal magnitudes); inf when a coordinate is
      exactly zero; NaN when the gradient holds a NaN.

    >>> import jax.numpy as jnp
    >>> signsgd_bound(jnp.ones(4)), signsgd_bound(jnp.array([1.0, 0.0]))
    (2.0, inf)
    """
    g = _flat64(grads)
    if np.any(np.isnan(g)):
        return math.nan
    low = float(np.min(np.abs(g)))
    norm = float(np.linalg.norm(g))
    return math.inf if low == 0.0 else norm / low


def _batch64(prob: Problem) -> tuple:
    return tuple(
        jnp.asarray(x, jnp.result_type(float))
        if np.issubdtype(np.asarray(x).dtype, np.floating)
        else jnp.asarray(x)
        for x in prob.train
    )


def newton_bound(problem: Any, params: PyTree, *, max_params: int = MAX_HESSIAN_PARAMS) -> float:
    """kappa(H) = max|lambda| / min|lambda| of the training loss's Hessian at ``params``.

    The Hessian is exact (``jax.hessian`` on the flattened params, in float64 under x64) of the
    loss on the whole training set, symmetrised; its singular values are |lambda|. Small models
    only: n params cost an n x n matrix.

    Args:
      problem: a Problem or problem spec.
      params: the point (a params pytree).
      max_params: refuse models larger than this.

    Returns:
      The condition number; inf when H is singular.

    Raises:
      ValueError: more than ``max_params`` parameters.

    >>> import jax.numpy as jnp
    >>> newton_bound("quadratic(dim=3, kappa=4)", {"x": jnp.ones(3)})
    4.0
    """
    return newton_bounds(problem, [params], max_params=max_params)[0]


def newton_bounds(
    problem: Any, params_list: Sequence[PyTree], *, max_params: int = MAX_HESSIAN_PARAMS
) -> list[float]:
    """:func:`newton_bound` at each of several points, their Hessians in one compiled call (one
    compilation per problem and parameter layout instead of an eager Hessian per point)."""
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    wide = jnp.result_type(float)
    flats = []
    for params in params_list:
        flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.asarray(x, wide), params))
        flats.append(flat)
    if not flats:
        return []
    if flats[0].size > max_params:
        raise ValueError(
            f"newton_bound computes the exact Hessian: {flats[0].size} parameters is more than "
            f"max_params={max_params} ({flats[0].size}^2 entries); use a smaller model or raise "
            "max_params"
        )
    program = _hessian_program(prob, params_list[0], unravel)
    hessians = np.asarray(program(jnp.stack(flats), _batch64(prob)))
    out = []
    for hessian in hessians.astype(np.float64):
        singular = np.abs(np.linalg.eigvalsh(0.5 * (hessian + hessian.T)))
        low = float(singular.min())
        out.append(math.inf if low == 0.0 else float(singular.max()) / low)
    return out


_HESSIANS: dict = {}  # compiled vmapped Hessians, keyed by problem identity and layout


def _hessian_program(prob: Problem, template: PyTree, unravel):
    layout = [(np.shape(x), str(jnp.result_type(x))) for x in jax.tree.leaves(template)]
    key = (id(prob), jax.tree.structure(template), tuple(layout), jnp.result_type(float))
    if key not in _HESSIANS:
        if len(_HESSIANS) >= 16:
            _HESSIANS.pop(next(iter(_HESSIANS)))
        hess = jax.hessian(lambda v, batch: prob.loss(unravel(v), batch))
        _HESSIANS[key] = (prob, jax.jit(jax.vmap(hess, in_axes=(0, None))))
    return _HESSIANS[key][1]


def theory_checks(
    problem: Any,
    grads_list: Sequence[PyTree],
    params_list: Sequence[PyTree],
    *,
    kappa: float | None = None,
    max_params: int = MAX_HESSIAN_PARAMS,
) -> dict[str, Any]:
    """Both bounds over visited gradients and parameters, median and max.

    Args:
      problem: a Problem or problem spec.
      grads_list: visited gradients (e.g. the third item of ``visited_states``).
      params_list: visited params; the Newton bound is computed at each.
      kappa: a measured condition number of a map, to put beside the bounds.
      max_params: above this many parameters the Newton bound is skipped (None, with a note).

    Returns:
      ``{"signsgd_bound_median", "signsgd_bound_max", "newton_bound_median",
      "newton_bound_max", "n_grads", "n_params_checked", "note"}``; with ``kappa`` also
      ``"kappa"``, ``"kappa_meets_signsgd"`` and ``"kappa_meets_newton"`` (kappa >= the max
      bound; None where a bound is missing).

    >>> import jax.numpy as jnp
    >>> grads, params = [jnp.array([1.0, 2.0])], [{"x": jnp.ones(2)}]
    >>> c = theory_checks("quadratic(dim=2, kappa=9)", grads, params)
    >>> c["signsgd_bound_max"] == 5**0.5, c["newton_bound_max"]
    (True, 9.0)
    """
    sign = [signsgd_bound(g) for g in grads_list]
    note = ""
    try:
        newton = newton_bounds(problem, params_list, max_params=max_params)
    except ValueError as err:
        newton, note = [], f"Newton bound skipped: {err}"

    def stats(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        return float(np.median(values)), float(np.max(values))

    out: dict[str, Any] = {}
    out["signsgd_bound_median"], out["signsgd_bound_max"] = stats(sign)
    out["newton_bound_median"], out["newton_bound_max"] = stats(newton)
    out["n_grads"], out["n_params_checked"], out["note"] = len(sign), len(newton), note
    if kappa is not None:
        out["kappa"] = float(kappa)
        for name in ("signsgd", "newton"):
            bound = out[f"{name}_bound_max"]
            out[f"kappa_meets_{name}"] = None if bound is None else bool(kappa >= bound)
    return out
