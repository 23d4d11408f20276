"""Optimizers defined by a norm: steepest descent, Muon, Shampoo.

Each acts per parameter tensor. Matrix norms apply to 2-D tensors; vectors and scalars (biases)
use a stated vector fallback (``vector_norm``, default ``linf``: sign descent).

* ``steepest(norm, lr, beta, scale)``: d = -lr * s(m) * dualize(m), m the (EMA) momentum of g
  (beta = 0: the gradient), s = ||m||_* (``scale='dual'``: true steepest descent
  argmin <m, d> + ||d||^2 / (2 lr)) or 1 (``scale='unit'``: a unit step in the norm).
* ``muon(lr, beta, orthogonalizer)``: m = beta m + g; d = -lr sqrt(max(1, d_out/d_in)) orth(m) on
  matrices (orth: Newton-Schulz by default), -lr sign(m) on vectors (``fallback='adam'``: Adam).

Matrices are read in ``layout`` (default ``in_out``: W is (d_in, d_out), y = x @ W, optimorph's
models; ``out_in`` for PyTorch-style weights), see :mod:`optimorph.norms.layout`.
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
from optimorph.norms.layout import DEFAULT_LAYOUT, LAYOUTS, fans
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


def _direction(norm_name: str, vector_norm: str, g: jax.Array, scale: str, layout: str):
    name = norm_name if g.ndim == 2 or not NORMS[norm_name].matrix else vector_norm
    entry = NORMS[name]
    d = entry.dualize_of(g, layout)
    return d * entry.dual_of(g, layout) if scale == "dual" else d


@register(
    "steepest",
    _lr(0.01),
    HParam("norm", "spectral", str, choices=tuple(NORMS.names()), doc="the norm"),
    HParam("beta", 0.0, float, low=0.0, high=1.0, open_high=True, doc="EMA momentum of g"),
    HParam("scale", "dual", str, choices=("dual", "unit"), doc="step ||m||_* or a unit step"),
    HParam("vector_norm", "linf", str, choices=_VECTOR_NORMS, doc="norm for non-matrices"),
    HParam("layout", DEFAULT_LAYOUT, str, choices=tuple(LAYOUTS), doc="in_out: W (d_in, d_out); out_in: PyTorch"),
    summary="steepest descent under a named norm: d = -lr ||m||_* dualize(m)",
)
def steepest(
    lr, norm: str, beta, scale: str, vector_norm: str, layout: str
) -> optax.GradientTransformation:
    def update(grads, state, params=None, **extra):
        count, t, m = _momentum_step(beta, state, grads)
        rate = _rate(lr, t)
        updates = jax.tree.map(
            lambda x: (-rate * _direction(norm, vector_norm, x, scale, layout)).astype(x.dtype), m
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
    m: Any  # matrices: m = beta m + g; vectors: the same, or Adam's first moment (fallback)
    v: Any  # vectors with fallback='adam': Adam's second moment; () elsewhere


@register(
    "muon",
    _lr(0.02),
    HParam("beta", 0.95, float, low=0.0, high=1.0, open_high=True, doc="momentum"),
    HParam("nesterov", True, bool, doc="orthogonalize g + beta m instead of m"),
    HParam("orthogonalizer", "quintic", str, choices=tuple(ORTHOGONALIZERS.names())),
    HParam("layout", DEFAULT_LAYOUT, str, choices=tuple(LAYOUTS), doc="in_out: W (d_in, d_out); out_in: PyTorch"),
    HParam("fallback", "sign", str, choices=("sign", "adam"),
           doc="vectors: sign (l_inf, the anthology's) or adam (optax.contrib.muon's)"),
    HParam("adam_b1", 0.9, float, low=0.0, high=1.0, open_high=True, doc="Adam on vectors"),
    HParam("adam_b2", 0.999, float, low=0.0, high=1.0, open_high=True, doc="Adam on vectors"),
    HParam("adam_eps", 1e-8, float, low=0.0, doc="Adam on vectors"),
    summary="orthogonalized momentum on matrices (Newton-Schulz), sign or Adam on vectors",
)  # fmt: skip
def muon(
    lr, beta, nesterov: bool, orthogonalizer: str, layout: str, fallback: str, adam_b1, adam_b2,
    adam_eps,
) -> optax.GradientTransformation:  # fmt: skip
    """Muon (Jordan et al. 2024): orthogonalized momentum on weight matrices.

    Matrices: m <- beta m + g; d = -lr sqrt(max(1, d_out / d_in)) orth(v), v = g + beta m
    (Nesterov) or m, with (d_in, d_out) read in ``layout`` (:mod:`optimorph.norms.layout`).
    Vectors and other non-matrices: ``fallback='sign'`` (default) steps -lr sign(v), steepest
    descent under l_inf as the norms anthology has it; ``fallback='adam'`` steps Adam with
    (adam_b1, adam_b2, adam_eps) and optax's bias-corrected Nesterov form when ``nesterov``,
    as ``optax.contrib.muon`` does. Conventions that differ from optax.contrib.muon on matrices:
    optax keeps an EMA momentum with bias correction (a scale that orthogonalization removes,
    except through its eps), and its Nesterov form b1 m_hat_{t+1} + (1-b1) g_hat_t weighs g
    and m differently after step 1; optimorph's g + beta m is the original Muon's.
    """
    orth = resolve_orthogonalizer(orthogonalizer)
    adam_vectors = fallback == "adam"

    def init(params):
        def second(p):
            return jnp.zeros_like(p) if adam_vectors and p.ndim != 2 else jnp.zeros((), p.dtype)

        return MuonState(_count(), jax.tree.map(jnp.zeros_like, params),
                         jax.tree.map(second, params))  # fmt: skip

    def matrix_step(m, g, rate):
        v = g + beta * m if nesterov else m
        d_in, d_out = fans(v.shape, layout)
        return -rate * orth(v) * max(1.0, d_out / d_in) ** 0.5

    def adam_step(m, v, g, t, rate):
        b1, b2 = _hi(adam_b1), _hi(adam_b2)
        m_hat = m / (1 - b1**t)
        if nesterov:  # optax's scale_by_adam(nesterov=True)
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        return -rate * m_hat / (jnp.sqrt(v / (1 - b2**t)) + adam_eps)

    def update(grads, state, params=None, **extra):
        count, t = _step(state.count)
        rate = _rate(lr, t)

        def one(g, m, v):
            if g.ndim == 2:
                m = (beta * m + g).astype(g.dtype)
                return matrix_step(m, g, rate).astype(g.dtype), m, v
            if adam_vectors:
                m = (adam_b1 * m + (1 - adam_b1) * g).astype(g.dtype)
                v = (adam_b2 * v + (1 - adam_b2) * g * g).astype(g.dtype)
                return adam_step(m, v, g, t, rate).astype(g.dtype), m, v
            m = (beta * m + g).astype(g.dtype)
            return (-rate * jnp.sign(g + beta * m if nesterov else m)).astype(g.dtype), m, v

        leaves, treedef = jax.tree.flatten(grads)
        out = [one(g, m, v) for g, m, v in zip(leaves, treedef.flatten_up_to(state.m),
                                               treedef.flatten_up_to(state.v), strict=True)]  # fmt: skip
        un = [jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(3)]
        return un[0], MuonState(count, un[1], un[2])

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
           doc="U V^T of spectral / RMS->RMS layers"),
    HParam("layout", DEFAULT_LAYOUT, str, choices=tuple(LAYOUTS), doc="in_out: W (d_in, d_out); out_in: PyTorch"),
    summary="steepest descent under the modular norm: a norm per layer, weighted max",
)  # fmt: skip
def modular(
    lr,
    beta,
    scale: str,
    embed_norm: str,
    dense_norm: str,
    vector_norm: str,
    embed_mass,
    orthogonalizer: str,
    layout: str,
) -> optax.GradientTransformation:
    """Steepest descent under the modular norm (:mod:`optimorph.norms.modular`) of the EMA
    momentum m of g (beta = 0: the gradient): dW_l = -(eta / s_l) dualize_l(m_l)."""
    from optimorph.norms.modular import assign, modular_step

    rules = (("embed", embed_norm), ("matrix", dense_norm), ("other", vector_norm))
    polar = None if orthogonalizer == "svd" else resolve_orthogonalizer(orthogonalizer)

    def update(grads, state, params=None, **extra):
        count, t, m = _momentum_step(beta, state, grads)
        assignment = assign(m, rules, {"embed": embed_mass})
        updates = modular_step(m, assignment, _rate(lr, t), scale, polar, layout)
        return updates, SteepestState(count, m)

    return optax.GradientTransformationExtraArgs(_steepest_init, update)
