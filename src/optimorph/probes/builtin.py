"""The probes the engine itself offers: stagnation, noise-replica distance, parameter trajectory.

>>> [p.name for p in (stalled(), replica_distance(), trajectory())]
['stalled', 'replica_distance', 'trajectory']
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from optimorph.precision import stalled_fraction
from optimorph.probes.base import Probe, StepValues

__all__ = ["stalled", "replica_distance", "trajectory", "flat_params"]


def flat_params(tree) -> jax.Array:
    """All float leaves of a params pytree as one vector in the default float dtype."""
    f = jnp.result_type(float)
    return jnp.concatenate([jnp.ravel(x).astype(f) for x in jax.tree.leaves(tree)])


def _stalled(values: StepValues, state):
    return state, {"stalled": stalled_fraction(values.params, values.updates, values.new_params)}


@functools.cache  # one object: the trainer's compiled programs are keyed on probe ids
def stalled() -> Probe:
    """Stagnation: the fraction of nonzero updates that rounding absorbed (x + dx == x), per step.

    Costs two reductions per step (about 2x at tiny batch sizes), so it runs on request.
    """
    return Probe("stalled", init=lambda params: (), update=_stalled)


def _replica_distance(values: StepValues, state):
    run = flat_params(values.params)
    reps = jax.vmap(flat_params)(values.replica_params)
    return state, {"replica_distance": jnp.linalg.norm(reps - run[None], axis=1)}


@functools.cache  # one object: the trainer's compiled programs are keyed on probe ids
def replica_distance() -> Probe:
    """||theta_replica(t) - theta(t)|| of every noisy replica at each evaluation: the rounding
    noise floor is their median (DESIGN.md section 3)."""
    return Probe("replica_distance", init=lambda params: (), update=_replica_distance, when="eval")


@functools.cache  # one object: the trainer's compiled programs are keyed on probe ids
def trajectory() -> Probe:
    """The flattened parameters at each evaluation (default float dtype)."""
    return Probe(
        "trajectory",
        init=lambda params: (),
        update=lambda values, state: (state, {"trajectory": flat_params(values.params)}),
        when="eval",
    )
