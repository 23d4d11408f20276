"""Random scaling: x_{t+1} = x_t + s_t Delta_t with s_t ~ Exponential(1), one scalar per step.

Delta_t is the update of an inner optimizer. With the scale drawn independently of everything
else, E[f(x_{t+1}) - f(x_t)] = E[<grad f(x_{t+1}), Delta_t>] exactly (integrate by parts against
the Exponential(1) density), which is what makes the update correlation along Delta_t an unbiased
measure of progress (the ``corr`` probe reads ``delta`` from this state).

>>> import jax.numpy as jnp
>>> tx = random_scaling_tx(resolve("sgd(lr=0.1)").build(), seed=0)
>>> state = tx.init({"w": jnp.ones(2)})
>>> state._fields
('count', 'inner', 'delta')
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optimorph.optimizers.registry import HParam, register, resolve

__all__ = ["RandomScalingState", "random_scaling_tx"]


class RandomScalingState(NamedTuple):
    count: jax.Array
    inner: Any
    delta: Any  # the inner optimizer's last (unscaled) update


def random_scaling_tx(
    inner: optax.GradientTransformation, seed: int = 0
) -> optax.GradientTransformation:
    """Wrap ``inner``: its update Delta_t is applied as s_t Delta_t, s_t ~ Exponential(1)."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return RandomScalingState(jnp.zeros([], jnp.int32), inner.init(params), zeros)

    def update(grads, state, params=None, **extra):
        delta, inner_state = inner.update(grads, state.inner, params)
        key = jax.random.fold_in(jax.random.key(seed), state.count)
        s = jax.random.exponential(key, (), jnp.result_type(float))
        updates = jax.tree.map(lambda d: (s * d).astype(d.dtype), delta)
        count = optax.safe_int32_increment(state.count)
        return updates, RandomScalingState(count, inner_state, delta)

    return optax.GradientTransformation(init, update)


@register(
    "random-scaling",
    HParam("inner", "sgd(lr=0.01)", str, doc="the inner optimizer's spec"),
    HParam("seed", 0, int, low=0, doc="seed of the scales s_t (shared by every training seed)"),
    summary="x += s_t * Delta_t, s_t ~ Exponential(1), Delta_t the inner optimizer's update",
)
def _random_scaling(inner: str, seed: int) -> optax.GradientTransformation:
    spec = resolve(inner)
    if spec.entry is not None and spec.entry.name == "random-scaling":
        raise ValueError("random-scaling(inner=...) cannot wrap itself")
    return random_scaling_tx(spec.build(), seed)
