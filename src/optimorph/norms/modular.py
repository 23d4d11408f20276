"""The modular norm: one norm per layer by rules on parameter paths, combined by a weighted max.

||(W_1..W_L)|| = max_l s_l ||W_l||_l. Its steepest step (DESIGN section 5; the anthology's
modular duality) is

    dW_l = -(eta / s_l) dualize_l(G_l),   eta = lr * sum_k ||G_k||_{*,k} / s_k,

or ``eta = lr`` with ``scale='unit'``. Rules (first match wins; a path is the parameter's
``jax.tree_util.keystr``):

* a path containing ``embed`` (an embedding table, tokens as rows) -> ``l1_to_rms``;
* any other 2-D weight -> ``rms_to_rms`` (a dense layer);
* everything else (biases, vectors, scalars) -> ``linf`` (sign descent).

Matrix norms are operator norms of the map a weight applies, read through the one layout
convention of :mod:`optimorph.norms.layout`: optimorph's models compute ``x @ W`` (W is
d_in x d_out, layout ``in_out``) and look embeddings up as rows of E (vocab x dim), so both act
as the operator W^T; ``layout='out_in'`` reads PyTorch-style (d_out, d_in) weights as they are.

>>> import jax.numpy as jnp
>>> params = {"embed": {"w": jnp.ones((5, 3))}, "dense0": {"w": jnp.ones((6, 4)),
...           "b": jnp.ones(4)}}
>>> [(a.path, a.norm, a.mass) for a in assign(params)]
[("['dense0']['b']", 'linf', 1.0), ("['dense0']['w']", 'rms_to_rms', 1.0), ("['embed']['w']", 'l1_to_rms', 1.0)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from optimorph.norms.dualizers import NORMS
from optimorph.norms.layout import DEFAULT_LAYOUT, as_operator, from_operator

__all__ = ["Assignment", "DEFAULT_RULES", "assign", "modular_norm", "modular_step"]

# (substring of the path or "matrix" / "other", norm); the first matching rule wins.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("embed", "l1_to_rms"),
    ("matrix", "rms_to_rms"),
    ("other", "linf"),
)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """One parameter's place in the modular norm."""

    path: str
    shape: tuple[int, ...]
    norm: str
    mass: Any  # a float, or a traced scalar inside the engine's grid


def _matches(rule: str, path: str, ndim: int) -> bool:
    if rule == "matrix":
        return ndim == 2
    if rule == "other":
        return True
    return rule in path


def assign(
    params: Any,
    rules: Sequence[tuple[str, str]] = DEFAULT_RULES,
    masses: Mapping[str, float] | None = None,
) -> list[Assignment]:
    """Each parameter's norm (first matching rule) and mass (``masses[substring]``, else 1).

    Raises:
      ValueError: a rule names an unknown norm or a matrix norm matches a non-matrix.
    """
    out = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = jax.tree_util.keystr(key_path)
        ndim = jnp.ndim(leaf)
        name = next((n for r, n in rules if _matches(r, path, ndim)), None)
        if name is None:
            raise ValueError(f"modular norm: no rule matches {path} (add an ('other', norm) rule)")
        entry = NORMS.lookup(name)
        if entry.matrix and ndim != 2:
            raise ValueError(f"modular norm: {name} is a matrix norm but {path} has shape "
                             f"{jnp.shape(leaf)}")  # fmt: skip
        mass = next((m for k, m in (masses or {}).items() if k in path), 1.0)
        if isinstance(mass, (int, float)):  # a traced mass (a grid lane) is checked by its spec
            mass = float(mass)
            if not mass > 0:
                raise ValueError(f"modular norm: the mass of {path} must be > 0, got {mass}")
        out.append(Assignment(path, tuple(jnp.shape(leaf)), name, mass))
    return out


def modular_norm(
    params: Any, assignment: Sequence[Assignment], layout: str = DEFAULT_LAYOUT
) -> jax.Array:
    """max_l s_l ||W_l||_l."""
    leaves = jax.tree.leaves(params)
    values = [a.mass * NORMS[a.norm].value_of(w, layout) for w, a in
              zip(leaves, assignment, strict=True)]  # fmt: skip
    return jnp.max(jnp.stack(values))


def _dualizer(name: str, polar: Callable[[jax.Array], jax.Array] | None):
    """The norm's dualizer, with U V^T from ``polar`` (an orthogonalizer) when given."""
    if polar is None or name not in ("spectral", "rms_to_rms"):
        return NORMS[name].dualize
    if name == "spectral":
        return polar
    return lambda g: jnp.sqrt(g.shape[0] / g.shape[1]) * polar(g)


def modular_step(
    grads: Any,
    assignment: Sequence[Assignment],
    lr: Any,
    scale: str = "dual",
    polar: Callable[[jax.Array], jax.Array] | None = None,
    layout: str = DEFAULT_LAYOUT,
) -> Any:
    """The steepest step under the modular norm (module docstring), as a pytree like grads.

    ``polar`` replaces the SVD in the spectral and RMS -> RMS dualizers by an orthogonalizer
    (e.g. Newton-Schulz): an approximate U V^T, and no LAPACK call inside the training loop
    (with ``scale='unit'``; the dual-norm scale still needs singular values).
    """
    leaves, treedef = jax.tree.flatten(grads)
    ops = [as_operator(g, layout) if NORMS[a.norm].matrix else g
           for g, a in zip(leaves, assignment, strict=True)]  # fmt: skip
    if scale == "dual":
        duals = [NORMS[a.norm].dual(g) / a.mass for g, a in zip(ops, assignment, strict=True)]
        eta = lr * sum(duals)
    else:
        eta = lr
    steps = []
    for g, a, leaf in zip(ops, assignment, leaves, strict=True):
        d = _dualizer(a.norm, polar)(g)
        d = from_operator(d, layout) if NORMS[a.norm].matrix else d
        steps.append((-(eta / a.mass) * d).astype(leaf.dtype))
    return jax.tree.unflatten(treedef, steps)
