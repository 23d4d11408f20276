"""The Problem: data, a model's init and loss, and evaluation sets, as pure functions and arrays."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

Batch = tuple  # (inputs, targets) arrays with a leading example axis
Params = Any  # a pytree of float arrays

__all__ = ["Problem", "Batch", "Params", "hold_out", "VALIDATION"]

VALIDATION = "validation"
"""Name of the evaluation set :func:`hold_out` carves from the training set."""
_VALIDATION_STREAM = 0x76616C  # "val": the split's own random stream, never the data's


@dataclasses.dataclass(frozen=True)
class Problem:
    """A training problem, independent of optimizer, precision and engine.

    Attributes:
      name: the spec it was built from, e.g. ``"two-moons(n=500, noise=0.1, flip=0.1)"``.
      init: ``init(key) -> params``, a pytree of float32 arrays (the engine casts to the
        precision's parameter format).
      loss: ``loss(params, batch) -> scalar``, the mean loss over the batch; differentiable.
      train: the training set ``(x, y)`` as NumPy arrays with a leading example axis. A problem
        without data (a quadratic) uses one dummy example and ``full_batch=True``.
      evals: named evaluation sets ``{"test": (x, y), ...}``; the engine also evaluates on the
        training set (or a fixed subset of it) under the name ``"train"``.
      metrics: ``metrics(params, batch) -> {"loss": ..., "accuracy": ...}``: scalars computed
        on a whole evaluation set. Defaults to the loss alone.
      full_batch: every step uses the whole training set (deterministic problems).
      apply: the model's forward ``apply(params, x) -> outputs`` when there is one (figures such as
        decision boundaries use it).
      info: free-form facts (dimensions, where data came from) recorded in a run's config.
    """

    name: str
    init: Callable[[Any], Params]
    loss: Callable[[Params, Batch], Any]
    train: Batch
    evals: Mapping[str, Batch] = dataclasses.field(default_factory=dict)
    metrics: Callable[[Params, Batch], dict] | None = None
    full_batch: bool = False
    apply: Callable | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(np.shape(self.train[0])[0])

    def evaluate(self, params: Params, batch: Batch) -> dict:
        """Metrics on one evaluation set (traceable)."""
        if self.metrics is None:
            return {"loss": self.loss(params, batch)}
        return dict(self.metrics(params, batch))

    @classmethod
    def from_functions(
        cls,
        init: Callable[[Any], Params],
        loss: Callable[[Params, Batch], Any],
        train: Batch,
        *,
        name: str = "custom",
        evals: Mapping[str, Batch] | None = None,
        metrics: Callable[[Params, Batch], dict] | None = None,
        full_batch: bool = False,
        apply: Callable | None = None,
    ) -> "Problem":
        """Wrap any JAX model (plain functions, Flax, Equinox) given as init, loss and data.

        >>> import jax.numpy as jnp, numpy as np
        >>> p = Problem.from_functions(lambda key: {"w": jnp.zeros(3)},
        ...     lambda params, b: jnp.mean((b[0] @ params["w"] - b[1]) ** 2),
        ...     (np.ones((8, 3), np.float32), np.zeros(8, np.float32)))
        >>> p.n_train
        8
        """
        train = tuple(np.asarray(a) for a in train)
        if len({a.shape[0] for a in train}) != 1:
            raise ValueError("all training arrays must share the leading (example) axis length")
        return cls(
            name=name,
            init=init,
            loss=loss,
            train=train,
            evals=dict(evals or {}),
            metrics=metrics,
            full_batch=full_batch,
            apply=apply,
        )


def hold_out(problem: Problem, fraction: float, *, seed: int = 0) -> Problem:
    """``problem`` with a random ``fraction`` of its training set moved to an evaluation set
    named ``"validation"``: the engine evaluates it like the test sets and trains on the rest.

    ``round(fraction * n)`` examples (at least one, and at least one left to train on), chosen
    from a random stream of their own, ``numpy.random.SeedSequence((0x76616C, seed))``, so the
    same problem and seed always hold out the same examples and the data's own streams are
    untouched. Both parts keep the training set's order. The test sets are never touched.
    ``info`` records ``validation`` (the fraction), ``n_validation`` and the new ``n_train``.

    Args:
      problem: a problem with a training set of at least two examples.
      fraction: the fraction held out, in (0, 1).
      seed: the problem's data seed.

    Returns:
      The new Problem (``problem`` itself is unchanged).

    Raises:
      ValueError: a fraction outside (0, 1), a full-batch problem without data, too few
        examples, or a problem that already has an evaluation set named ``"validation"``.

    >>> import jax.numpy as jnp, numpy as np
    >>> p = Problem.from_functions(lambda key: {"w": jnp.zeros(1)},
    ...     lambda params, b: jnp.mean((b[0] @ params["w"] - b[1]) ** 2),
    ...     (np.arange(10.0).reshape(10, 1), np.zeros(10)))
    >>> q = hold_out(p, 0.2)
    >>> q.n_train, len(q.evals["validation"][0]), q.info["n_validation"]
    (8, 2, 2)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation={fraction!r}: the fraction held out must be in (0, 1)")
    if VALIDATION in problem.evals:
        raise ValueError(f"{problem.name} already has an evaluation set named {VALIDATION!r}")
    n = problem.n_train
    if problem.full_batch and n <= 1:
        raise ValueError(f"{problem.name} has no training data to hold out a validation set from")
    k = min(max(1, round(fraction * n)), n - 1)
    if k < 1:
        raise ValueError(f"{problem.name} has {n} training example(s): too few to hold any out")
    rng = np.random.default_rng(np.random.SeedSequence((_VALIDATION_STREAM, seed)))
    held = np.zeros(n, bool)
    held[rng.choice(n, size=k, replace=False)] = True
    train = tuple(np.asarray(a)[~held] for a in problem.train)
    validation = tuple(np.asarray(a)[held] for a in problem.train)
    info = {**problem.info, "n_train": n - k, "n_validation": k, "validation": fraction}
    return dataclasses.replace(
        problem, train=train, evals={**problem.evals, VALIDATION: validation}, info=info
    )
