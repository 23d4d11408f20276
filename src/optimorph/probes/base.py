"""The probe protocol: pure functions of the values a training step already computed.

A probe is a pair ``init(params) -> probe_state`` and
``update(values, probe_state) -> (probe_state, outputs)``, evaluated inside the compiled scan
after every step (DESIGN.md section 1, "Probes"). ``values`` is a :class:`StepValues`; ``outputs``
maps names to scalars, stored per step (averaged over ``log_every`` windows by the probe's
``reduce`` rule) beside the training loss. Probes never leave the device during a run.

Step t moves x_t to x_{t+1} using batch z_t (0-based t; DESIGN.md section 4 counts the same step
as x_{t-1} -> x_t with batch z_{t-1}).

>>> import jax.numpy as jnp
>>> norm = Probe("param_norm", init=lambda p: (),
...              update=lambda v, s: (s, {"param_norm": global_norm(v.new_params)}))
>>> norm.outputs
('param_norm',)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["StepValues", "Probe", "global_norm", "tree_dot", "tree_sub"]

PyTree = Any
Outputs = Mapping[str, jax.Array]


class StepValues(NamedTuple):
    """What one step computed, handed to every probe (all arrays of one run, replica 0).

    Attributes:
      t: int32 0-based index of the step (it moves ``params`` to ``new_params``).
      params: x_t, in the compute dtype.
      new_params: x_{t+1} as stored (the params format).
      grads: the (rounded) minibatch gradient at x_t on ``batch``.
      loss: f(x_t, batch).
      batch: the minibatch z_t.
      updates: the optimizer's update (x_{t+1} = fl(x_t + updates)).
      state: the optimizer state after the step.
      lr: the learning rate of this step (NaN when the optimizer has no ``lr``).
      loss_fn: ``loss_fn(params, batch)``, the problem's minibatch loss (a plain function).
      eval_batch: a fixed large batch (a prefix of the training set) for full-batch quantities F.
      key: a PRNG key for this step's probe randomness, independent of every training key.
      replica_params: the noisy replicas' stored params with a leading replica axis (noise
        replicas on), else None.
      hparams: this run's hyperparameters: the traced ones as the step sees them (``{"lr":
        ..., "b1": ...}``; a schedule's parameters nested) and the fixed flags and numbers
        (``bias_correction``), else None.

    Probes evaluated at evaluations (``when="eval"``) see ``t`` (steps done), ``params`` and
    ``new_params`` (both the current params), ``replica_params``, ``loss_fn``, ``eval_batch``
    and ``key``; the other fields are None.
    """

    t: jax.Array
    params: PyTree
    new_params: PyTree
    grads: PyTree
    loss: jax.Array
    batch: tuple
    updates: PyTree
    state: PyTree
    lr: jax.Array
    loss_fn: Callable[[PyTree, tuple], jax.Array]
    eval_batch: tuple
    key: jax.Array
    replica_params: PyTree = None
    hparams: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Probe:
    """A named trajectory probe.

    Attributes:
      name: what ``--probe`` selects.
      init: ``init(params) -> probe_state`` (a pytree; ``()`` when stateless).
      update: ``update(values, probe_state) -> (probe_state, outputs)``; outputs are scalars.
      outputs: the names ``update`` returns (default: just ``name``).
      reduce: how a ``log_every`` window of per-step outputs becomes one stored value:
        ``"mean"``, ``"nanmean"`` (probes that measure only every k steps emit NaN otherwise),
        ``"last"`` or ``"max"``.
      when: ``"step"`` (after every step; outputs are per-step series) or ``"eval"`` (at each
        evaluation, step 0 included; outputs are per-evaluation and may be arrays).
    """

    name: str
    init: Callable[[PyTree], PyTree]
    update: Callable[[StepValues, PyTree], tuple[PyTree, Outputs]]
    outputs: tuple[str, ...] = ()
    reduce: str = "mean"
    when: str = "step"

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (self.name,))
        if self.reduce not in REDUCERS:
            raise ValueError(f"probe {self.name}: reduce must be one of {', '.join(REDUCERS)}")
        if self.when not in ("step", "eval"):
            raise ValueError(f"probe {self.name}: when must be 'step' or 'eval'")


REDUCERS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "mean": lambda w: jnp.mean(w, axis=-1),
    "nanmean": lambda w: jnp.nanmean(w, axis=-1),
    "last": lambda w: w[..., -1],
    "max": lambda w: jnp.max(w, axis=-1),
}


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    """a - b leafwise, in the default float dtype (float64 under x64)."""
    f = jnp.result_type(float)
    return jax.tree.map(lambda x, y: x.astype(f) - y.astype(f), a, b)


def tree_dot(a: PyTree, b: PyTree) -> jax.Array:
    """<a, b> over every leaf at once (one global inner product)."""
    f = jnp.result_type(float)
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    parts = [jnp.vdot(x.astype(f), y.astype(f)) for x, y in pairs]
    return jnp.sum(jnp.stack(parts)) if parts else jnp.zeros((), f)


def global_norm(tree: PyTree) -> jax.Array:
    """The Euclidean norm of all leaves together (never a sum of per-layer norms)."""
    return jnp.sqrt(tree_dot(tree, tree))
