"""Prodigy: learning-rate-free steps sized by an estimate of the distance to the solution.

Two forms (``ema`` flag; a convention fork, see STYLE item 6):

* ``ema=False`` (the norms anthology's sign form): sign descent whose rate only grows,

      w_{t+1} = w_t - lr * d_t sign(g_t),
      d_{t+1} = max(d_t, <g_t, w_0 - w_t> / ||g_t||_1),   d_0 = ``d0``.

* ``ema=True`` (Mishchenko & Defazio 2023, Algorithm 4, the Adam version, in the arithmetic of
  the authors' code and optax.contrib.prodigy, which it matches in float64): with
  bc_t = sqrt(1 - b2^t) / (1 - b1^t) and the step's rate dlr = lr_t d_t bc_t,

      m = b1 m + (1 - b1) d g,       v = b2 v + (1 - b2) d^2 g^2,
      s = sqrt(b2) s + dlr d g / d0,  r = sqrt(b2) r + (d / d0) dlr <g, w_0 - w>,
      d_{t+1} = max(d_t, r / ||s||_1),
      w <- w - dlr (m / (sqrt(v) + d_{t+1} eps) + weight_decay w).

  Inner products and norms are global (over every parameter), in the default float dtype.

>>> import jax.numpy as jnp
>>> tx = resolve("prodigy(ema=false, d0=0.5)").build()
>>> p = {"w": jnp.asarray([1.0, -2.0])}
>>> u, s = tx.update({"w": jnp.asarray([3.0, -1.0])}, tx.init(p), p)
>>> u["w"].tolist(), float(s.d)  # sign descent of size d0; w = w_0 so d stays d0
([-0.5, 0.5], 0.5)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimorph.optimizers.first_order import _count, _hi, _lr, _rate, _step, _zeros, tmap
from optimorph.optimizers.registry import HParam, register, resolve  # noqa: F401 (doctest)

__all__ = ["ProdigyState"]


class ProdigyState(NamedTuple):
    count: jax.Array
    d: jax.Array  # the distance estimate (the effective learning rate), the params' dtype
    x0: Any  # the initial parameters
    m: Any  # first moment (zeros in the sign form)
    v: Any  # second moment (zeros in the sign form)
    s: Any  # the weighted gradient sum whose l1 norm normalises r (zeros in the sign form)
    r: jax.Array  # the weighted sum of d <g, x0 - x> (0 in the sign form), the params' dtype


def _scalar_dtype(params: Any) -> Any:
    """The dtype of d and r: the first floating parameter's (buffers take the params' dtype)."""
    floats = [x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return floats[0] if floats else jnp.result_type(float)


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(_hi(x).ravel(), _hi(y).ravel()).real
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


def _l1(tree: Any) -> jax.Array:
    return sum(jnp.sum(jnp.abs(_hi(x))) for x in jax.tree.leaves(tree))


@register(
    "prodigy",
    _lr(1.0),
    HParam("ema", True, bool, doc="Adam-style moments (false: the sign form, no EMAs)"),
    HParam("b1", 0.9, float, low=0.0, high=1.0, open_high=True, doc="first-moment EMA"),
    HParam("b2", 0.999, float, low=0.0, high=1.0, open_high=True, doc="second-moment EMA"),
    HParam("eps", 1e-8, float, low=0.0, doc="added to sqrt(v), scaled by d"),
    HParam("d0", 1e-6, float, low=0.0, open_low=True, doc="initial distance estimate"),
    HParam("weight_decay", 0.0, float, low=0.0, doc="decoupled weight decay (ema form)"),
    summary="Prodigy: steps scaled by a growing estimate d of the distance to the solution",
)
def prodigy(lr, ema: bool, b1, b2, eps, d0, weight_decay) -> optax.GradientTransformation:
    def init(params):
        zero = _zeros(params)
        x0 = tmap(jnp.asarray, params)
        dtype = _scalar_dtype(params)
        return ProdigyState(_count(), jnp.asarray(d0, dtype), x0, zero, zero, zero,
                            jnp.zeros([], dtype))  # fmt: skip

    def update(grads, state, params=None, **extra):
        if params is None:
            raise ValueError("prodigy needs the parameters: call update(grads, state, params)")
        count, t = _step(state.count)
        rate = _rate(lr, t)
        d, dtype = _hi(state.d), state.d.dtype
        toward_start = _dot(grads, tmap(lambda a, b: a - b, state.x0, params))
        if not ema:
            norm = _l1(grads)
            d_new = jnp.maximum(d, jnp.where(norm > 0, toward_start / jnp.where(norm > 0, norm,
                                                                                  1.0), 0.0))  # fmt: skip
            updates = tmap(lambda g: (-(rate * d) * jnp.sign(g)).astype(g.dtype), grads)
            return updates, state._replace(count=count, d=d_new.astype(dtype))
        b1h, b2h, d0h = _hi(b1), _hi(b2), _hi(d0)
        root = jnp.sqrt(b2h)
        bc = jnp.sqrt(1 - b2h**t) / (1 - b1h**t)
        dlr = d * rate * bc
        m = tmap(lambda m, g: (b1h * m + (1 - b1h) * d * g).astype(g.dtype), state.m, grads)
        v = tmap(lambda v, g: (b2h * v + (1 - b2h) * (d * g) ** 2).astype(g.dtype), state.v, grads)
        s = tmap(lambda s, g: (root * s + dlr * d * g / d0h).astype(g.dtype), state.s, grads)
        r = root * _hi(state.r) + (d / d0h) * dlr * toward_start
        norm_s = _l1(s)
        d_new = jnp.maximum(d, jnp.where(norm_s > 0, r / jnp.where(norm_s > 0, norm_s, 1.0), 0.0))
        decay = _hi(weight_decay)
        updates = tmap(
            lambda m, v, p: (-dlr * (m / (jnp.sqrt(v) + d_new * _hi(eps)) + decay * p)).astype(
                m.dtype
            ),
            m,
            v,
            params,
        )
        return updates, ProdigyState(count, d_new.astype(dtype), state.x0, m, v, s,
                                     r.astype(dtype))  # fmt: skip

    return optax.GradientTransformationExtraArgs(init, update)
