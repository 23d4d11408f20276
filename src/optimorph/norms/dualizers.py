"""Norms, their duals and their dualizers: steepest descent under a named norm.

For a norm ||.|| with dual norm ||.||_*, the steepest-descent step is

    argmin_d  <g, d> + (lambda / 2) ||d||^2  =  -(||g||_* / lambda) dualize(g),

where dualize(g) is a unit vector (||dualize(g)|| = 1) with <g, dualize(g)> = ||g||_*. The table
(the "Old optimizer, new norm" anthology) is written on operators: G is d_out x d_in, the matrix
of a map R^d_in -> R^d_out. A parameter stored in optimorph's layout W (d_in, d_out), y = x @ W,
is read as G = W^T and its dualizer transposed back: :mod:`optimorph.norms.layout` holds that
convention, and every function here takes ``layout=`` (``in_out``, the default, or ``out_in``
for PyTorch-style (d_out, d_in) weights):

| norm         | dualize(G)                             | dual norm                          |
|--------------|----------------------------------------|------------------------------------|
| l2           | g / ||g||_2                            | ||g||_2                            |
| linf         | sign(g)                                | ||g||_1                            |
| l1           | sign(g_i*) e_i*, i* = argmax |g_i|     | ||g||_inf                          |
| spectral     | U V^T (reduced SVD)                    | nuclear norm                       |
| l1_to_l2     | each column / its l2 norm              | sum of column l2 norms             |
| l2_to_linf   | each row / its l2 norm                 | sum of row l2 norms                |
| l1_to_linf   | sign(G)                                | sum |G_ij|                         |
| rms_to_rms   | sqrt(d_out / d_in) U V^T               | sqrt(d_out / d_in) * nuclear       |
| l1_to_rms    | each column / its RMS                  | sqrt(d_out) * sum of column l2     |

(The RMS->RMS norm is sqrt(d_in/d_out) times the spectral norm and l1->RMS the largest column
RMS; the tests check <G, dualize(G)> = ||G||_*, ||dualize(G)|| = 1 and that no sampled unit
direction does better, for every row, and each asymmetric norm's dualizer against a brute-force
maximisation in both layouts.)

>>> import jax.numpy as jnp
>>> g = jnp.asarray([3.0, -4.0])
>>> [float(dual_norm("l2", g)), float(dual_norm("linf", g)), float(dual_norm("l1", g))]
[5.0, 7.0, 4.0]
>>> dualize("linf", g).tolist()
[1.0, -1.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from optimorph import linalg
from optimorph.norms.layout import DEFAULT_LAYOUT, as_operator, from_operator
from optimorph.registry import Registry

__all__ = ["Norm", "NORMS", "norm", "dual_norm", "dualize", "steepest_step"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Norm:
    """A named norm: its value, its dual norm and its dualizer (``matrix``: needs 2-D input).

    ``value``, ``dual`` and ``dualize`` take operators (d_out x d_in); the ``*_of`` methods take
    a parameter in a named layout (:mod:`optimorph.norms.layout`) and are what optimizers call.
    """

    name: str
    value: Callable[[Array], Array]
    dual: Callable[[Array], Array]
    dualize: Callable[[Array], Array]
    matrix: bool
    doc: str

    def value_of(self, w: Array, layout: str = DEFAULT_LAYOUT) -> Array:
        return self.value(as_operator(w, layout) if self.matrix else w)

    def dual_of(self, w: Array, layout: str = DEFAULT_LAYOUT) -> Array:
        return self.dual(as_operator(w, layout) if self.matrix else w)

    def dualize_of(self, w: Array, layout: str = DEFAULT_LAYOUT) -> Array:
        if not self.matrix:
            return self.dualize(w)
        return from_operator(self.dualize(as_operator(w, layout)), layout)


NORMS: Registry[Norm] = Registry("norm")


def _safe_div(a: Array, b: Array) -> Array:
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def _svd(g: Array) -> tuple[Array, Array, Array]:
    """The reduced SVD, computed in float32 at least (no half-precision SVD on CPU)."""
    work = g.astype(jnp.promote_types(g.dtype, jnp.float32))
    return linalg.svd(work, full_matrices=False)


def _polar(g: Array) -> Array:
    """U V^T over the nonzero singular values (zero directions stay zero), in g's dtype."""
    u, s, vt = _svd(g)
    keep = s > s.max(initial=0.0) * max(g.shape) * jnp.finfo(s.dtype).eps
    return ((u * keep[None, :]) @ vt).astype(g.dtype)


def _col_norms(g: Array) -> Array:
    return jnp.linalg.norm(g, axis=0)


def _row_norms(g: Array) -> Array:
    return jnp.linalg.norm(g, axis=1)


def _l1_dualize(g: Array) -> Array:
    flat = g.ravel()
    i = jnp.argmax(jnp.abs(flat))
    return jnp.zeros_like(flat).at[i].set(jnp.sign(flat[i])).reshape(g.shape)


def _add(name: str, value, dual, dualize_fn, matrix: bool, doc: str) -> None:
    NORMS.add(name, Norm(name, value, dual, dualize_fn, matrix, doc))


_add(
    "l2",
    lambda g: jnp.linalg.norm(g.ravel()),
    lambda g: jnp.linalg.norm(g.ravel()),
    lambda g: _safe_div(g, jnp.linalg.norm(g.ravel())),
    False,
    "Euclidean (Frobenius)",
)
_add(
    "linf",
    lambda g: jnp.max(jnp.abs(g)),
    lambda g: jnp.sum(jnp.abs(g)),
    jnp.sign,
    False,
    "max |x_i| (sign descent)",
)
_add(
    "l1",
    lambda g: jnp.sum(jnp.abs(g)),
    lambda g: jnp.max(jnp.abs(g)),
    _l1_dualize,
    False,
    "sum |x_i| (greedy coordinate descent)",
)
_add(
    "spectral",
    lambda g: _svd(g)[1].max(),
    lambda g: _svd(g)[1].sum(),
    _polar,
    True,
    "largest singular value (Shampoo without accumulation, Muon)",
)
_add(
    "l1_to_l2",
    lambda g: _col_norms(g).max(),
    lambda g: _col_norms(g).sum(),
    lambda g: _safe_div(g, _col_norms(g)[None, :]),
    True,
    "max column l2 norm",
)
_add(
    "l2_to_linf",
    lambda g: _row_norms(g).max(),
    lambda g: _row_norms(g).sum(),
    lambda g: _safe_div(g, _row_norms(g)[:, None]),
    True,
    "max row l2 norm",
)
_add(
    "l1_to_linf",
    lambda g: jnp.max(jnp.abs(g)),
    lambda g: jnp.sum(jnp.abs(g)),
    jnp.sign,
    True,
    "max |G_ij| (as an operator l1 -> linf)",
)
_add(
    "rms_to_rms",
    lambda g: jnp.sqrt(g.shape[1] / g.shape[0]) * _svd(g)[1].max(),
    lambda g: jnp.sqrt(g.shape[0] / g.shape[1]) * _svd(g)[1].sum(),  # d_out / d_in
    lambda g: jnp.sqrt(g.shape[0] / g.shape[1]) * _polar(g),
    True,
    "RMS -> RMS operator norm (dense layers in the modular norm)",
)
_add("l1_to_rms",
     lambda g: _col_norms(g).max() / jnp.sqrt(g.shape[0]),
     lambda g: _col_norms(g).sum() * jnp.sqrt(g.shape[0]),
     lambda g: jnp.sqrt(g.shape[0]) * _safe_div(g, _col_norms(g)[None, :]), True,
     "l1 -> RMS operator norm (embeddings in the modular norm)")  # fmt: skip


def _get(name: str, g: Array) -> Norm:
    entry = NORMS.lookup(name)
    if entry.matrix and jnp.ndim(g) != 2:
        raise ValueError(f"norm {name!r} is a matrix norm; got an array of shape {jnp.shape(g)}")
    return entry


def norm(name: str, g: Array, layout: str = DEFAULT_LAYOUT) -> Array:
    """||g|| under the named norm (a matrix read in ``layout``)."""
    return _get(name, g).value_of(jnp.asarray(g), layout)


def dual_norm(name: str, g: Array, layout: str = DEFAULT_LAYOUT) -> Array:
    """||g||_* = max over ||d|| <= 1 of <g, d>."""
    return _get(name, g).dual_of(jnp.asarray(g), layout)


def dualize(name: str, g: Array, layout: str = DEFAULT_LAYOUT) -> Array:
    """The unit-norm direction d maximizing <g, d>, in g's layout."""
    return _get(name, g).dualize_of(jnp.asarray(g), layout)


def steepest_step(name: str, g: Array, lam: float = 1.0, layout: str = DEFAULT_LAYOUT) -> Array:
    """argmin_d <g, d> + lam/2 ||d||^2 = -(||g||_* / lam) dualize(g)."""
    entry = _get(name, g)
    g = jnp.asarray(g)
    return -(entry.dual_of(g, layout) / lam) * entry.dualize_of(g, layout)
