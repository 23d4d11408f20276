"""Matrix products whose backward pass multiplies quantized operands: a policy's ``backward`` role.

Training in MXFP4 as Tseng et al. do (Training LLMs with MXFP4, 2025, arXiv 2502.20586): the
forward pass computes y = x w as before, and the two products of the backward pass,

    dx = dy w^T     a reduction over the layer's outputs,
    dw = x^T dy     a reduction over the examples (and positions, for a convolution),

take each operand quantized to the role's format in blocks of ``block`` along the reduction
dimension, the way MX hardware multiplies: block by block, each block's elements times its
scale. ``transform=rht`` multiplies both operands of one product by the same random signs S
(fresh for every product and step) and the Hadamard matrix H before quantizing; the transforms
cancel in the product, (a S H)(b S H)^T = block * a b^T, so only the quantization sees them.
``transform=hadamard`` is the same with S = I. Stochastic rounding draws each operand's
elements independently, so with it the product is unbiased. A scalar format (``bf16``,
``e4m3``) rounds each operand elementwise.

The models' products (:func:`optimorph.problems.models.matrix_products`) call a
:class:`BackwardProducts` while the engine differentiates the loss; evaluation and probes use
plain products.

>>> import jax, jax.numpy as jnp
>>> from optimorph.precision import parse_format
>>> prod = BackwardProducts(parse_format("mxfp4(transform=hadamard)"), None)
>>> x, w = jnp.ones((4, 3)), jnp.ones((3, 2))
>>> y, grads = jax.value_and_grad(lambda w: prod(x, w).sum())(w)
>>> float(y), grads.tolist(), prod.calls
(24.0, [[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]], 1)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from optimorph.precision.block import BlockFormat, MXFormat
from optimorph.precision.formats import Format

__all__ = ["BackwardProducts", "reduced_product", "check_backward_format"]

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def check_backward_format(fmt: Any) -> None:
    """A ``backward`` role takes an MX format or a scalar one (elementwise); say so otherwise."""
    if isinstance(fmt, BlockFormat) and not isinstance(fmt, MXFormat):
        raise ValueError(
            f"backward={fmt.name}: the backward pass's operands take an MX format "
            "(mxfp4, mxfp8e4m3, ... with rounding= and transform=) or a scalar one (bf16, "
            "e4m3); code maps and per-tensor FP8 are for stored state"
        )


def reduced_product(fmt: Format | MXFormat, a: Array, b: Array, key: Array | None) -> Array:
    """a @ b^T ([p, r] x [q, r] -> [p, q]) with both operands quantized along r.

    ``fmt``: an MX format (its ``rounding`` resolved: 'stochastic' draws from ``key``) or a
    scalar format (stochastic when ``key`` is given). ``key`` also draws the shared signs of
    ``transform=rht``."""
    if not isinstance(fmt, MXFormat):
        k_a, k_b = (None, None) if key is None else tuple(jax.random.split(key))
        qa, qb = fmt.round(a, key=k_a), fmt.round(b, key=k_b)
        return jnp.matmul(qa, qb.T, precision=_HIGHEST)
    k_signs, k_a, k_b = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
    signs = None
    if fmt.transform == "rht":
        nblocks = -(-a.shape[-1] // fmt.block)
        signs = jax.random.rademacher(k_signs, (nblocks, fmt.block), jnp.float32)
    elements = (k_a, k_b) if fmt.rounding == "stochastic" else (None, None)
    qa = fmt.reduction_operand(a, elements[0], signs)
    qb = fmt.reduction_operand(b, elements[1], signs)
    out = jnp.einsum("pjb,qjb->pq", qa, qb, precision=_HIGHEST)
    return out * (1.0 / fmt.block) if fmt.transform != "none" else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _product(fmt, key, x, w):
    return jnp.matmul(x, w, precision=_HIGHEST)


def _product_fwd(fmt, key, x, w):
    return _product(fmt, key, x, w), (key, x, w)


def _product_bwd(fmt, residuals, dy):
    key, x, w = residuals
    k_dx, k_dw = (None, None) if key is None else tuple(jax.random.split(key))
    dx = reduced_product(fmt, dy, w, k_dx)  # dy [m, n] . w [k, n] over n
    dw = reduced_product(fmt, x.T, dy.T, k_dw)  # x^T [k, m] . dy^T [n, m] over m
    return None, dx.astype(x.dtype), dw.astype(w.dtype)


_product.defvjp(_product_fwd, _product_bwd)


class BackwardProducts:
    """``x [m, k] @ w [k, n]``, forward as usual, backward on quantized operands (module doc).

    One instance serves one traced gradient: each call (a layer's product) folds its index into
    ``key``, so every product draws its own signs and roundings. ``calls`` counts them (a loss
    without any product would leave the role without effect: the engine refuses it).

    Args:
      fmt: the role's format, its rounding resolved (``MXFormat.under``).
      key: the step's backward key, or None when the format draws nothing.
    """

    def __init__(self, fmt: Format | MXFormat, key: Array | None):
        check_backward_format(fmt)
        self.fmt, self.key, self.calls = fmt, key, 0

    def __call__(self, x: Array, w: Array) -> Array:
        key = None if self.key is None else jax.random.fold_in(self.key, self.calls)
        self.calls += 1
        return _product(self.fmt, key, x, w)
