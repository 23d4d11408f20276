"""Newton's method with the exact Hessian, for small models.

    theta <- theta - eta_t (H + damping I)^-1 g,   H = the Hessian of the minibatch loss at theta.

The Hessian is ``jax.hessian`` of the loss over the flattened parameters, so the optimizer needs
the loss: its update takes optax's ``value_fn`` extra argument (a function of the parameters;
optimorph's trainer passes it, as it does for optax's line searches). The solve runs in the
default float dtype (float64 under x64). It costs n^2 memory and an n^3 solve for n parameters,
so models above ``max_params`` are refused at ``init`` with a message saying so. Where H is
indefinite (non-convex losses) the step can point uphill; ``damping`` only shifts the spectrum.

>>> import jax.numpy as jnp
>>> tx = resolve("newton(lr=1.0, damping=0)").build()
>>> a = jnp.asarray([1.0, 10.0])
>>> loss = lambda p: 0.5 * jnp.sum(a * p["w"] ** 2)
>>> p = {"w": jnp.asarray([1.0, 1.0])}
>>> u, _ = tx.update({"w": a * p["w"]}, tx.init(p), p, value_fn=loss)
>>> (p["w"] + u["w"]).round(12).tolist()  # one Newton step solves a quadratic
[0.0, 0.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from optimorph import linalg
from optimorph.optimizers.first_order import _count, _hi, _lr, _rate, _step
from optimorph.optimizers.registry import HParam, register, resolve  # noqa: F401 (doctest)

__all__ = ["NewtonState"]


class NewtonState(NamedTuple):
    count: jax.Array


@register(
    "newton",
    _lr(1.0),
    HParam("damping", 1e-4, float, low=0.0, doc="added to the Hessian's diagonal"),
    HParam("max_params", 5000, int, low=1, doc="refuse models with more parameters"),
    summary="theta -= eta (H + damping I)^-1 g with the exact Hessian (small models only)",
    needs=("value_fn",),
)
def newton(lr, damping, max_params: int) -> optax.GradientTransformation:
    def init(params):
        n = sum(int(x.size) for x in jax.tree.leaves(params))
        if n > max_params:
            raise ValueError(
                f"newton: the model has {n} parameters; the exact Hessian is {n}x{n} with an "
                f"n^3 solve per step, and newton is for models of at most max_params="
                f"{max_params} (a smaller model, or newton(max_params={n}) at that cost)"
            )
        return NewtonState(_count())

    def update(grads, state, params=None, *, value_fn=None, **extra):
        if value_fn is None or params is None:
            raise ValueError(
                "newton needs the loss and the parameters: update(grads, state, params, "
                "value_fn=loss_of_params) (optimorph's trainer passes value_fn)"
            )
        count, t = _step(state.count)
        flat, unravel = ravel_pytree(params)
        hessian = jax.hessian(lambda f: value_fn(unravel(f)))(flat)
        g = _hi(ravel_pytree(grads)[0])
        system = _hi(hessian) + _hi(damping) * jnp.eye(flat.size, dtype=g.dtype)
        step = linalg.solve(system, g)
        updates = unravel((-_rate(lr, t) * step).astype(flat.dtype))
        return updates, NewtonState(count)

    return optax.GradientTransformationExtraArgs(init, update)
