"""Optimizers defined by a norm: steepest descent, Muon, Shampoo.

Each acts per parameter tensor. Matrix norms apply to 2-D tensors; vectors and scalars (biases)
use a stated vector fallback (``vector_norm``, default ``linf``: sign descent).

* ``steepest(norm, lr, beta, scale)``: d = -lr * s(m) * dualize(m), m the (EMA) momentum of g
  (beta = 0: the gradient), s = ||m||_* (``scale='dual'``: true steepest descent
  argmin <m, d> + ||d||^2 / (2 lr)) or 1 (``scale='unit'``: a unit step in the norm).
* ``muon(lr, beta, orthogonalizer)``: m = beta m + g; d = -lr sqrt(max(1, d_out/d_in)) orth(m) on
  matrices (orth: Newton-Schulz by default), -lr sign(m) on vectors.
* ``shampoo(lr, accumulate, eps)``: L (+)= G G^T, R (+)= G^T G; d = -lr L^-1/4 G R^-1/4 with
  (L + eps I), roots by eigendecomposition in the default float dtype (float64 under x64).
  Without accumulation this is U V^T of G: steepest descent under the spectral norm, unit step.
  Vectors: s (+)= g^2, d = -lr g / sqrt(s + eps) (sign descent without accumulation).

>>> import jax.numpy as jnp
>>> tx = resolve("shampoo(lr=1.0, accumulate=false, eps=0)").build()
>>> g = {"w": jnp.asarray([[3.0, 0.0], [0.0, 0.5]])}
>>> tx.update(g, tx.init(g), g)[0]["w"].round(12).tolist()  # U V^T of a diagonal G: -I
[[-1.0, -0.0], [-0.0, -1.0]]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimorph.norms.dualizers import NORMS
from optimorph.norms.orthogonalize import (
    ORTHOGONALIZERS,
    inverse_fourth_root,
    resolve_orthogonalizer,
)
from optimorph.optimizers.first_order import _count, _hi, _lr, _rate, _step
from optimorph.optimizers.registry import HParam, register, resolve  # noqa: F401 (doctest)

__all__ = ["SteepestState", "MuonState", "ShampooState"]

_MATRIX_NORMS = tuple(n.name for n in NORMS.values() if n.matrix)
_VECTOR_NORMS = tuple(n.name for n in NORMS.values() if not n.matrix)


class SteepestState(NamedTuple):
    count: jax.Array
    m: Any


def _direction(norm_name: str, vector_norm: str, g: jax.Array, scale: str) -> jax.Array:
    name = norm_name if g.ndim == 2 or not NORMS[norm_name].matrix else vector_norm
    entry = NORMS[name]
    d = entry.dualize(g)
    return d * entry.dual(g) if scale == "dual" else d


@register(
    "steepest",
    _lr(0.01),
    HParam("norm", "spectral", str, choices=tuple(NORMS.names()), doc="the norm"),
    HParam("beta", 0.0, float, low=0.0, high=1.0, open_high=True, doc="EMA momentum of g"),
    HParam("scale", "dual", str, choices=("dual", "unit"), doc="step ||m||_* or a unit step"),
    HParam("vector_norm", "linf", str, choices=_VECTOR_NORMS, doc="norm for non-matrices"),
    summary="steepest descent under a named norm: d = -lr ||m||_* dualize(m)",
)
def steepest(lr, norm: str, beta, scale: str, vector_norm: str) -> optax.GradientTransformation:
    def update(grads, state, params=None, **extra):
        count, t, m = _momentum_step(beta, state, grads)
        rate = _rate(lr, t)
        updates = jax.tree.map(
            lambda x: (-rate * _direction(norm, vector_norm, x, scale)).astype(x.dtype), m
        )
        return updates, SteepestState(count, m)

    return optax.GradientTransformationExtraArgs(_steepest_init, update)


def _steepest_init(params) -> SteepestState:
    return SteepestState(_count(), jax.tree.map(jnp.zeros_like, params))


def _momentum_step(beta, state: SteepestState, grads) -> tuple:
    """The new count, t and the EMA momentum m = beta m + (1 - beta) g (beta = 0: g)."""
    count, t = _step(state.count)
    b = jnp.asarray(beta)
    m = jax.tree.map(lambda o, g: (b * o + (1 - b) * g).astype(g.dtype), state.m, grads)
    return count, t, m


class MuonState(NamedTuple):
    count: jax.Array
    m: Any


@register(
    "muon",
    _lr(0.02),
    HParam("beta", 0.95, float, low=0.0, high=1.0, open_high=True, doc="momentum"),
    HParam("nesterov", True, bool, doc="orthogonalize g + beta m instead of m"),
    HParam("orthogonalizer", "quintic", str, choices=tuple(ORTHOGONALIZERS.names())),
    summary="orthogonalized momentum on matrices (Newton-Schulz), sign of momentum on vectors",
)
def muon(lr, beta, nesterov: bool, orthogonalizer: str) -> optax.GradientTransformation:
    orth = resolve_orthogonalizer(orthogonalizer)

    def init(params):
        return MuonState(_count(), jax.tree.map(jnp.zeros_like, params))

    def direction(m, g):
        v = g + beta * m if nesterov else m
        if v.ndim == 2:
            d_out, d_in = v.shape
            return orth(v) * max(1.0, d_out / d_in) ** 0.5
        return jnp.sign(v)

    def update(grads, state, params=None, **extra):
        count, t = _step(state.count)
        m = jax.tree.map(lambda o, g: (beta * o + g).astype(g.dtype), state.m, grads)
        rate = _rate(lr, t)
        updates = jax.tree.map(lambda mm, g: (-rate * direction(mm, g)).astype(g.dtype), m, grads)
        return updates, MuonState(count, m)

    return optax.GradientTransformationExtraArgs(init, update)


class ShampooState(NamedTuple):
    count: jax.Array
    left: Any  # per matrix: sum of G G^T (or the last); () for non-matrices
    right: Any  # per matrix: sum of G^T G (or the last)
    diag: Any  # per non-matrix: sum of g^2 (or the last); () for matrices


@register(
    "shampoo",
    _lr(0.01),
    HParam("accumulate", True, bool, doc="sum G G^T over steps (false: this step's only)"),
    HParam("eps", 1e-12, float, low=0.0, doc="added to the preconditioners' eigenvalues"),
    summary="d = -lr L^-1/4 G R^-1/4 (L = sum G G^T, R = sum G^T G); U V^T without accumulation",
)
def shampoo(lr, accumulate: bool, eps) -> optax.GradientTransformation:
    def init(params):
        def left(p):
            return jnp.zeros((p.shape[0],) * 2, p.dtype) if p.ndim == 2 else jnp.zeros((), p.dtype)

        def right(p):
            return jnp.zeros((p.shape[1],) * 2, p.dtype) if p.ndim == 2 else jnp.zeros((), p.dtype)

        def diag(p):
            return jnp.zeros((), p.dtype) if p.ndim == 2 else jnp.zeros_like(p)

        tm = jax.tree.map
        return ShampooState(_count(), tm(left, params), tm(right, params), tm(diag, params))

    def update(grads, state, params=None, **extra):
        count, t = _step(state.count)
        rate = _rate(lr, t)

        def one(g, left, right, diag):
            if g.ndim == 2:
                gh = g.astype(_hi(0.0).dtype)
                left = (left if accumulate else 0) + (gh @ gh.T).astype(g.dtype)
                right = (right if accumulate else 0) + (gh.T @ gh).astype(g.dtype)
                d = inverse_fourth_root(left, eps) @ gh @ inverse_fourth_root(right, eps)
                return (-rate * d).astype(g.dtype), left, right, diag
            diag = (diag if accumulate else 0) + g * g
            s = diag.astype(_hi(0.0).dtype) + eps
            d = jnp.where(s > 0, g / jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)
            return (-rate * d).astype(g.dtype), left, right, diag

        leaves, treedef = jax.tree.flatten(grads)
        parts = [treedef.flatten_up_to(x) for x in (state.left, state.right, state.diag)]
        out = [one(g, *ps) for g, *ps in zip(leaves, *parts, strict=True)]
        un = [jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(4)]
        return un[0], ShampooState(count, un[1], un[2], un[3])

    return optax.GradientTransformationExtraArgs(init, update)


@register(
    "modular",
    _lr(0.01),
    HParam("beta", 0.0, float, low=0.0, high=1.0, open_high=True, doc="EMA momentum of g"),
    HParam("scale", "dual", str, choices=("dual", "unit"), doc="eta = lr sum ||G_k||_*/s_k or lr"),
    HParam("embed_norm", "l1_to_rms", str, choices=_MATRIX_NORMS, doc="paths with 'embed'"),
    HParam("dense_norm", "rms_to_rms", str, choices=_MATRIX_NORMS, doc="other 2-D weights"),
    HParam("vector_norm", "linf", str, choices=_VECTOR_NORMS, doc="biases and vectors"),
    HParam("embed_mass", 1.0, float, low=0.0, open_low=True, doc="s_l of embeddings (others 1)"),
    HParam("orthogonalizer", "svd", str, choices=tuple(ORTHOGONALIZERS.names()),
           doc="U V^T of spectral / RMS->RMS layers"),  # fmt: skip
    summary="steepest descent under the modular norm: a norm per layer, weighted max",
)
def modular(
    lr,
    beta,
    scale: str,
    embed_norm: str,
    dense_norm: str,
    vector_norm: str,
    embed_mass,
    orthogonalizer: str,
) -> optax.GradientTransformation:
    """Steepest descent under the modular norm (:mod:`optimorph.norms.modular`) of the EMA
    momentum m of g (beta = 0: the gradient): dW_l = -(eta / s_l) dualize_l(m_l)."""
    from optimorph.norms.modular import assign, modular_step

    rules = (("embed", embed_norm), ("matrix", dense_norm), ("other", vector_norm))
    polar = None if orthogonalizer == "svd" else resolve_orthogonalizer(orthogonalizer)

    def update(grads, state, params=None, **extra):
        count, t, m = _momentum_step(beta, state, grads)
        assignment = assign(m, rules, {"embed": embed_mass})
        updates = modular_step(m, assignment, _rate(lr, t), scale, polar)
        return updates, SteepestState(count, m)

    return optax.GradientTransformationExtraArgs(_steepest_init, update)
