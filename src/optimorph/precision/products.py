"""Matrix products on quantized operands: a policy's ``forward`` and ``backward`` roles.

Training in MXFP4 as Tseng et al. do (Training LLMs with MXFP4, 2025, arXiv 2502.20586): the
two products of the backward pass,

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

The ``forward`` role does the same to the forward product y = x w (x quantized along its
features, w along its rows: both along the reduction), as an MX matrix unit multiplies; its
gradient is the straight-through one (the backward pass multiplies the unquantized x and w,
or the ``backward`` role's quantization of them, as microxcaling's MX layers do).

The models' products (:func:`optimorph.problems.models.matrix_products`) call a
:class:`QuantizedProducts` while the engine differentiates the loss; evaluation and probes use
plain products.

>>> import jax, jax.numpy as jnp
>>> from optimorph.precision import parse_format
>>> prod = QuantizedProducts(None, parse_format("mxfp4(transform=hadamard)"), None)
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

from optimorph import random_bits
from optimorph.precision.block import BlockFormat, MXFormat
from optimorph.precision.formats import Format

__all__ = ["QuantizedProducts", "reduced_product", "check_product_format"]

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def check_product_format(role: str, fmt: Any) -> None:
    """A ``forward`` or ``backward`` role takes an MX format or a scalar one (elementwise)."""
    if isinstance(fmt, BlockFormat) and not isinstance(fmt, MXFormat):
        raise ValueError(
            f"{role}={fmt.name}: the operands of matrix products take an MX format "
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
        signs = random_bits.rademacher(k_signs, (nblocks, fmt.block), jnp.float32)
    elements = (k_a, k_b) if fmt.rounding == "stochastic" else (None, None)
    qa = fmt.reduction_operand(a, elements[0], signs)
    qb = fmt.reduction_operand(b, elements[1], signs)
    out = jnp.einsum("pjb,qjb->pq", qa, qb, precision=_HIGHEST)
    return out * (1.0 / fmt.block) if fmt.transform != "none" else out


def _split3(key: Array | None) -> tuple:
    return (None,) * 3 if key is None else tuple(jax.random.split(key, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _product(forward, backward, key, x, w):
    if forward is None:
        return jnp.matmul(x, w, precision=_HIGHEST)
    return reduced_product(forward, x, w.T, _split3(key)[0]).astype(x.dtype)  # over k


def _product_fwd(forward, backward, key, x, w):
    return _product(forward, backward, key, x, w), (key, x, w)


def _product_bwd(forward, backward, residuals, dy):
    key, x, w = residuals
    if backward is None:  # straight through: the unquantized operands
        dx = jnp.matmul(dy, w.T, precision=_HIGHEST)
        dw = jnp.matmul(x.T, dy, precision=_HIGHEST)
    else:
        _, k_dx, k_dw = _split3(key)
        dx = reduced_product(backward, dy, w, k_dx)  # dy [m, n] . w [k, n] over n
        dw = reduced_product(backward, x.T, dy.T, k_dw)  # x^T [k, m] . dy^T [n, m] over m
    return None, dx.astype(x.dtype), dw.astype(w.dtype)


_product.defvjp(_product_fwd, _product_bwd)


class QuantizedProducts:
    """``x [m, k] @ w [k, n]`` with the forward and/or the backward pass on quantized operands
    (module doc).

    One instance serves one traced gradient: each call (a layer's product) folds its index into
    ``key``, so every product draws its own signs and roundings. ``calls`` counts them (a loss
    without any product would leave the roles without effect: the engine refuses it).

    Args:
      forward, backward: the roles' formats, their rounding resolved (``MXFormat.under``), or
        None (plain products there).
      key: the step's products key, or None when no format draws random numbers.
    """

    def __init__(self, forward: Format | MXFormat | None, backward: Format | MXFormat | None,
                 key: Array | None):  # fmt: skip
        for role, fmt in (("forward", forward), ("backward", backward)):
            check_product_format(role, fmt)
        self.forward, self.backward, self.key, self.calls = forward, backward, key, 0

    def __call__(self, x: Array, w: Array) -> Array:
        key = None if self.key is None else jax.random.fold_in(self.key, self.calls)
        self.calls += 1
        return _product(self.forward, self.backward, key, x, w)
