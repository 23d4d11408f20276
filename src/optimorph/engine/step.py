"""The rounded step U_p, its key layout and its batch order: the one copy every caller uses.

One step of an optimizer at a precision policy p (DESIGN.md section 3):

    g      = fl_grads(grad f(x_t, z_t))              the gradient, rounded to the grads format
    u, s'  = update(g, s_t, x_t)                      the optimizer, in the compute dtype
    s_{t+1} = fl_state(s')                            every state slot rounded to its format
    u      = fl_updates(u)                            only with an updates role
    x_{t+1} = fl_params(x_t + u)                      summed wide, rounded once

With noise replicas (the rounding noise floor) every stored value is multiplied by (1 + u_p xi),
xi ~ Uniform(-1, 1), in float64 just before its rounding; replica 0 has no noise and is the run.
Training (:mod:`optimorph.engine.trainer`), the simulation defect and the phase diagram
(:mod:`optimorph.equivalence`) all call the functions here, so a comparison's replica 0, a plain
training run and the defect's visited states are the same computation, bit for bit.

Key layout: a run's key splits into (init, data, stochastic rounding, noise) keys. Batch order:
epoch e is the permutation ``permutation(fold_in(data_key, e), n)``; step t takes the slice
``pos * B : (pos + 1) * B`` of its epoch's permutation, the last partial batch dropped.

A precision here is anything with the :class:`~optimorph.precision.Precision` methods the step
calls (``cast_params``, ``to_compute``, ``round_grads``, ``round_state``, ``round_updates``,
``apply_updates``, ``round_hparam``, ``rounding``, ``keyed``, ``kahan``): the phase diagram
passes a policy whose mantissa width is a traced number.

>>> import jax, jax.numpy as jnp, optax
>>> from optimorph.precision import precision
>>> p = precision("fp32")
>>> tx = optax.sgd(0.5)
>>> out = apply_update(tx, p, {"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), None,
...                    {"w": jnp.ones(2)})
>>> out.params["w"].tolist()
[0.5, 0.5]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimorph.problems.models import matrix_products

__all__ = [
    "RunKeys",
    "run_keys",
    "seed_keys",
    "stored_state_key",
    "BatchOrder",
    "permutation",
    "stored_hparams",
    "lane_hparams",
    "numeric_hparams",
    "learning_rate",
    "Start",
    "start",
    "gradient",
    "Updated",
    "apply_update",
    "Noise",
    "check_policy",
]

PyTree = Any


# ---------------------------------------------------------------------------------------------
# Keys and batches


class RunKeys(NamedTuple):
    """The four independent keys of one run (one seed)."""

    init: jax.Array
    data: jax.Array
    rounding: jax.Array
    noise: jax.Array


def run_keys(key: jax.Array) -> RunKeys:
    """Split a run's key into its (init, data, stochastic-rounding, noise) keys."""
    return RunKeys(*jax.random.split(key, 4))


def seed_key(seed: Any) -> jax.Array:
    """The key of seed ``seed``'s run; every optimizer's run of a seed starts from it (paired
    seeds). ``seed`` may be traced (the trainer maps it over lanes)."""
    return jax.random.key(jnp.asarray(seed, jnp.uint32))


def seed_keys(seed: int) -> RunKeys:
    """:func:`run_keys` of seed ``seed``'s run: what replaying its steps needs (the
    stochastic-rounding key of a keyed policy)."""
    return run_keys(seed_key(seed))


@dataclasses.dataclass(frozen=True)
class BatchOrder:
    """Which examples step t sees: a fresh permutation per epoch, consecutive slices of it.

    Attributes:
      n: training-set size.
      batch_size: examples per step (``n`` for full batch).
    """

    n: int
    batch_size: int

    @property
    def full_batch(self) -> bool:
        return self.batch_size >= self.n

    @property
    def steps_per_epoch(self) -> int:
        return max(self.n // self.batch_size, 1)

    def permutation(self, data_key: jax.Array, epoch: jax.Array) -> jax.Array:
        """The example order of ``epoch``: jax's ``permutation(fold_in(data_key, epoch), n)``."""
        return permutation(jax.random.fold_in(data_key, epoch), self.n)

    def advance(self, data_key: jax.Array, perm: jax.Array, t: jax.Array) -> jax.Array:
        """The permutation step t uses, given the one step t - 1 used (redrawn at epoch start).

        With t shared by all lanes the predicate is unbatched, so under vmap this stays a real
        branch: one sort per epoch, not one per step.
        """
        if self.full_batch:
            return perm
        epoch, pos = t // self.steps_per_epoch, t % self.steps_per_epoch
        return jax.lax.cond(pos == 0, lambda: self.permutation(data_key, epoch), lambda: perm)

    def batch(self, train: tuple, perm: jax.Array, t: jax.Array) -> tuple:
        """Step t's minibatch from the training arrays and its epoch's permutation."""
        if self.full_batch:
            return train
        pos = t % self.steps_per_epoch
        idx = jax.lax.dynamic_slice(perm, (pos * self.batch_size,), (self.batch_size,))
        return tuple(jnp.take(a, idx, axis=0) for a in train)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)`` bit for bit, faster on CPU when x64 is on.

    jax shuffles ``arange(n)`` in ``ceil(3 ln n / ln(2**32 - 1))`` rounds (one up to n = 1625),
    each a stable sort by fresh 32-bit random keys: ``lax.sort_key_val(bits, x)``. XLA's CPU sort
    of two operands calls a generic comparator per comparison: 1.7 ms per epoch for 10 lanes of
    500 examples, an eighth of a two-moons epoch's CPU time at batch 32. One uint64 per element,
    the key above its position, makes the elements distinct, so a one-operand sort (XLA's fast
    path: 0.4 ms) puts them in the stable order; the random bits drawn are jax's. Without x64
    there is no uint64 and jax's own function runs. Tested against jax's, two rounds included.

    >>> k = jax.random.key(0)
    >>> bool((permutation(k, 10) == jax.random.permutation(k, 10)).all())
    True
    """
    if not jax.config.jax_enable_x64:
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    x = jnp.arange(n)
    for _ in range(rounds):
        key, sub = jax.random.split(key)
        x = x[stable_order(jax.random.bits(sub, (n,), jnp.uint32))]
    return x


def stable_order(keys: jax.Array) -> jax.Array:
    """The indices that sort 1-d uint32 ``keys`` stably (ties in index order); needs x64.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> stable_order(jnp.array([3, 1, 3, 1], jnp.uint32)).tolist()
    [1, 3, 0, 2]
    """
    index = jnp.arange(keys.shape[0], dtype=jnp.uint64)
    packed = jax.lax.sort((keys.astype(jnp.uint64) << jnp.uint64(32)) | index)
    return (packed & jnp.uint64(0xFFFFFFFF)).astype(jnp.int64)


# ---------------------------------------------------------------------------------------------
# Hyperparameters


def numeric_hparams(spec: Any) -> dict[str, float]:
    """The hyperparameters that are stored in the hparams format: numbers, not schedule
    parameters (which a host-side schedule computes in high precision)."""
    return {k: v for k, v in spec.traced_values().items() if not isinstance(v, Mapping)}


def stored_hparams(spec: Any, policy: Any) -> dict[str, Any]:
    """A spec's traced hyperparameters as the step sees them: numbers rounded to the policy's
    hparams format, schedule parameters (nested mappings) at full precision."""
    return lane_hparams([spec], policy, 1, lanes_axis=False)


def lane_hparams(
    specs: Sequence[Any], policy: Any, repeats: int, *, lanes_axis: bool = True
) -> dict[str, Any]:
    """Per-lane traced hyperparameters of a grid: each spec's values repeated ``repeats`` times
    (one per seed) along a leading axis; rounding as :func:`stored_hparams`."""
    f = jnp.result_type(float)

    def column(values: list) -> jax.Array:
        arr = jnp.asarray(np.repeat(values, repeats), f)
        return arr if lanes_axis else arr[0]

    out: dict[str, Any] = {}
    for name, value in specs[0].traced_values().items():
        rows = [s.traced_values()[name] for s in specs]
        if isinstance(value, Mapping):  # a schedule's parameters: full precision
            out[name] = {k: column([r[k] for r in rows]) for k in value}
        else:
            out[name] = policy.round_hparam(column(rows))
    return out


def learning_rate(spec: Any, hparams: Mapping[str, Any], t: jax.Array) -> jax.Array:
    """The learning rate step t (0-based) uses, or NaN when the optimizer has no ``lr``."""
    f = jnp.result_type(float)
    entry = getattr(spec, "entry", None)
    if entry is None or "lr" not in {h.name for h in entry.hparams}:
        return jnp.asarray(jnp.nan, f)
    lr = spec.values["lr"]
    if hasattr(lr, "with_params"):
        traced = hparams.get("lr")
        lr = lr.with_params(traced) if isinstance(traced, Mapping) else lr
        return jnp.asarray(lr(jnp.asarray(t + 1, f)), f)  # optimizers count steps from 1
    return jnp.asarray(hparams.get("lr", lr), f)


# ---------------------------------------------------------------------------------------------
# Noise replicas


def _mix(x: jax.Array) -> jax.Array:
    """lowbias32 integer hash (Wellons): a well-mixed uint32 from a uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _hash_uniform(shape: tuple, seed: jax.Array) -> jax.Array:
    """Uniform(-1, 1) float64 values, one per element, from a counter-based hash of ``seed``."""
    n = int(np.prod(shape)) if shape else 1
    bits = _mix(jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1) + _mix(seed))
    return (bits.astype(jnp.float64) * 2.0**-31 - 1.0).reshape(shape)


class Noise(NamedTuple):
    """Rounding-sized noise of one replica at one step: x -> x (1 + scale xi), xi ~ U(-1, 1).

    xi comes from a counter-based integer hash (threefry per leaf and step doubled the compile
    time). ``scale`` 0 is replica 0: the multiplication by exactly 1 changes nothing.
    """

    seed: jax.Array  # uint32, per replica
    scale: jax.Array  # the format's unit roundoff, or 0

    def at(self, t: jax.Array) -> tuple[Callable, Callable]:
        """The (state, params) perturbations of step t."""
        step_seed = _mix(self.seed ^ _mix(t.astype(jnp.uint32)))
        return self._perturb(step_seed), self._perturb(_mix(step_seed + jnp.uint32(1)))

    def _perturb(self, seed: jax.Array) -> Callable[[PyTree], PyTree]:
        def perturb(tree: PyTree) -> PyTree:
            leaves, treedef = jax.tree.flatten(tree)
            out = []
            for i, leaf in enumerate(leaves):
                if jnp.issubdtype(leaf.dtype, jnp.floating):
                    salt = seed + jnp.uint32(0x9E3779B9) * jnp.uint32(i + 1)
                    xi = _hash_uniform(leaf.shape, salt)
                    leaf = leaf.astype(jnp.float64) * (1.0 + self.scale * xi)
                out.append(leaf)
            return jax.tree.unflatten(treedef, out)

        return perturb


# ---------------------------------------------------------------------------------------------
# The step


class Start(NamedTuple):
    """A run's initial stored state."""

    params: PyTree
    state: PyTree
    compensation: PyTree | None


def start(
    init_params: Callable[[jax.Array], PyTree],
    tx: optax.GradientTransformation,
    policy: Any,
    keys: RunKeys,
) -> Start:
    """Initial params (rounded to the params format) and optimizer state (rounded like every
    later one; stochastic rounding draws from the rounding key)."""
    params = policy.cast_params(init_params(keys.init))
    sr = keys.rounding if policy.keyed else None
    state = policy.round_state(tx.init(policy.to_compute(params)), sr)
    comp = policy.init_compensation(params) if policy.kahan else None
    return Start(params, state, comp)


def _step_keys(policy: Any, rounding_key: jax.Array | None, t: jax.Array) -> tuple:
    """(grads, state, params, updates) keys of step t when the policy draws random numbers
    (``policy.keyed``), else Nones. Without an updates role the first three are what they
    always were (a 3-way split) and the updates key is None."""
    if not policy.keyed or rounding_key is None:
        return (None, None, None, None)
    step_key = jax.random.fold_in(rounding_key, t)
    if getattr(policy, "updates", None) is None:
        return (*jax.random.split(step_key, 3), None)
    return tuple(jax.random.split(step_key, 4))


def stored_state_key(policy: Any, rounding_key: jax.Array | None, t: jax.Array):
    """The key the optimizer state stored before step t was rounded with (None when the policy
    draws no random numbers): the run's rounding key at t = 0 (:func:`start`), step t - 1's
    state key after (:func:`apply_update`). ``t`` may be traced."""
    if not policy.keyed or rounding_key is None:
        return None
    later = _step_keys(policy, rounding_key, jnp.maximum(t - 1, 0))[1]
    data = jnp.where(t == 0, jax.random.key_data(rounding_key), jax.random.key_data(later))
    return jax.random.wrap_key_data(data)


def gradient(
    loss_fn: Callable[[PyTree, tuple], jax.Array],
    policy: Any,
    params: PyTree,
    batch: tuple,
    *,
    rounding_key: jax.Array | None = None,
    t: jax.Array | None = None,
) -> tuple[jax.Array, PyTree, PyTree]:
    """(loss, rounded gradient, params in the compute dtype) at stored ``params`` on ``batch``.

    With a ``forward`` or ``backward`` role the models' matrix products run that pass on
    quantized operands (:mod:`optimorph.precision.products`), drawing from the step's products
    key."""
    params_c = policy.to_compute(params)
    products = policy.products(_products_key(policy, rounding_key, t))
    if products is None:
        loss, grads = jax.value_and_grad(loss_fn)(params_c, batch)
    else:
        with matrix_products(products):
            loss, grads = jax.value_and_grad(loss_fn)(params_c, batch)
        if not products.calls:
            raise ValueError(
                f"precision {policy.name!r}: this problem's loss has no matrix product of "
                "optimorph's models (mlp, cnn, linear and the data sets built on them), so "
                "forward= and backward= would change nothing; drop them or choose such a "
                "problem"
            )
    grads = policy.round_grads(grads, _step_keys(policy, rounding_key, t)[0])
    return loss, grads, params_c


_PRODUCTS_SALT = 0x6B61  # the products key is folded from the step key: the 3/4-way split
# of the other roles stays what it was, so adding the roles moves no other draw


def _products_key(policy: Any, rounding_key: jax.Array | None, t: jax.Array | None):
    """Step t's key for the quantized matrix products (None: the policy draws nothing or no
    key was given)."""
    if not policy.keyed or rounding_key is None:
        return None
    return jax.random.fold_in(jax.random.fold_in(rounding_key, t), _PRODUCTS_SALT)


class Updated(NamedTuple):
    """What :func:`apply_update` returns."""

    params: PyTree
    state: PyTree
    compensation: PyTree | None
    updates: PyTree


def apply_update(
    tx: optax.GradientTransformation,
    policy: Any,
    params: PyTree,
    state: PyTree,
    compensation: PyTree | None,
    grads: PyTree,
    *,
    params_c: PyTree | None = None,
    rounding_key: jax.Array | None = None,
    t: jax.Array | None = None,
    noise: Noise | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> Updated:
    """The optimizer's update from stored (params, state) with a rounded gradient, rounded.

    Args:
      tx: the optimizer (hyperparameters already as the step sees them).
      policy: the precision policy.
      params, state, compensation: the stored run state (compensation: Kahan's, else None).
      grads: the gradient, already rounded to the grads format.
      params_c: ``policy.to_compute(params)`` when the caller has it.
      rounding_key, t: the run's stochastic-rounding key and the step index.
      noise: this replica's noise (None: no noise replicas).
      extra_args: passed to optimizers that take them (optax's
        ``GradientTransformationExtraArgs``: ``value``, ``grad``, ``value_fn``).

    Returns:
      An :class:`Updated` with the new stored params, state and compensation, and the update.
    """
    params_c = policy.to_compute(params) if params_c is None else params_c
    state_c = policy.to_compute(state)
    if extra_args and isinstance(tx, optax.GradientTransformationExtraArgs):
        updates, new_state = tx.update(grads, state_c, params_c, **extra_args)
    else:
        updates, new_state = tx.update(grads, state_c, params_c)
    _, k_state, k_params, k_updates = _step_keys(policy, rounding_key, t)
    updates = policy.round_updates(updates, k_updates)
    perturb_params = None
    if noise is not None:
        perturb_state, perturb_params = noise.at(t)
        new_state = perturb_state(new_state)
    new_params, comp = policy.apply_updates(
        params, updates, compensation, k_params, perturb=perturb_params
    )
    return Updated(new_params, policy.round_state(new_state, k_state), comp, updates)


def check_policy(policy: Any, spec: Any, init_params: Callable[[jax.Array], PyTree]) -> None:
    """Refuse a precision whose slot overrides name no field of this optimizer's state.

    The state's structure comes from ``jax.eval_shape`` of its init (nothing is computed).
    """
    params = jax.eval_shape(init_params, jax.random.key(0))
    state = jax.eval_shape(spec.build().init, params)
    policy.check_slots(state, spec.name)
