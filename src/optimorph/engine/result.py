"""What a training run returns: arrays indexed [optimizer, seed, time]."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["TrainResult"]


@dataclasses.dataclass
class TrainResult:
    """Per-step training loss and periodic evaluation metrics of every (optimizer, seed) run.

    Attributes:
      optimizers: the optimizer specs as given (one row each).
      seeds: the seeds (one column each).
      steps: ``[T]`` the step (1-based) each ``train_loss`` column ends at; with ``log_every=k`` a
        column is the mean loss of the k steps ending there.
      train_loss: ``[O, S, T]`` minibatch training loss (before each step's update).
      eval_steps: ``[E]`` steps at which evaluation ran (0 = the initial parameters).
      evals: ``{"train/loss": [O, S, E], "test/accuracy": [O, S, E], ...}``.
      diverged_at: ``[O, S]`` first step whose loss or parameters were NaN/inf, -1 if none.
      final_params: per optimizer, the parameter pytree with a leading seed axis (NumPy).
      wall_time: seconds spent training (compilation included).
      config: everything needed to reproduce the run (problem, optimizers, precision, steps, ...).
      stalled: ``[O, S, T]`` fraction of coordinates whose nonzero update rounding absorbed
        (x + dx == x), averaged like ``train_loss``.
      replica_distance: ``[O, S, E, k]`` with ``replicas=k``: ||theta_replica - theta|| of each
        noisy replica at each evaluation (the noise floor is their median), else None.
      trajectory: ``[O, S, E, P]`` with ``record_params``: flattened parameters at each
        evaluation (float64), else None.
      probes: per-step outputs of the run's trajectory probes, ``[O, S, T]`` like
        ``train_loss`` (averaged over ``log_every`` windows by each probe's rule).
      rounded_hparams: per optimizer, the hyperparameters its precision changed when storing
        them, each with its fix (``"eps=1e-08 is stored as 0.0 in fp16: keep hyperparameters
        wide with ..., or choose eps >= 6.104e-05"``): the usual cause of a divergence.
      visited: with ``visit_every``: per optimizer, its first seed's visited states, a tuple
        ``(params, state, grads)`` of trees with a leading axis over ``visit_steps`` (the
        state before each of those steps and the gradient it uses; JAX arrays), else None.
      visit_steps: ``[V]`` the steps ``visited`` was recorded before, else None.
    """

    optimizers: list[str]
    seeds: list[int]
    steps: np.ndarray
    train_loss: np.ndarray
    eval_steps: np.ndarray
    evals: dict[str, np.ndarray]
    diverged_at: np.ndarray
    final_params: list[Any] = dataclasses.field(default_factory=list)
    wall_time: float = 0.0
    config: dict = dataclasses.field(default_factory=dict)
    stalled: np.ndarray | None = None
    replica_distance: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    probes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    rounded_hparams: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    visited: list[Any] | None = None
    visit_steps: np.ndarray | None = None

    def __repr__(self) -> str:
        """A short summary (the arrays can be megabytes): shape, optimizers, divergence, time.

        >>> r = TrainResult(["sgd(lr=0.1)"], [0, 1], np.arange(1, 4), np.zeros((1, 2, 3)),
        ...                 np.arange(2), {"test/accuracy": np.zeros((1, 2, 2))},
        ...                 np.full((1, 2), -1))
        >>> r
        TrainResult(1 optimizer x 2 seeds x 3 steps; optimizers: sgd(lr=0.1); evals: \
test/accuracy; diverged: 0/2 runs; wall 0.0 s)
        """
        o, s, t = self.train_loss.shape
        extra = [f"probes: {', '.join(self.probes)}"] if self.probes else []
        parts = [
            f"{o} optimizer{'s' if o != 1 else ''} x {s} seed{'s' if s != 1 else ''} x {t} steps",
            f"optimizers: {', '.join(self.optimizers)}",
            f"evals: {', '.join(self.evals) or 'none'}",
            *extra,
            f"diverged: {int((self.diverged_at >= 0).sum())}/{o * s} runs",
            f"wall {self.wall_time:.1f} s",
        ]
        return f"TrainResult({'; '.join(parts)})"

    def noise_floor(self) -> np.ndarray:
        """``[O, S, E]`` median over replicas of the replica distance (DESIGN.md section 3)."""
        if self.replica_distance is None:
            raise ValueError("this run has no noise replicas; train with replicas=4")
        return np.median(self.replica_distance, axis=-1)

    def diverged(self) -> list[tuple[str, int, int]]:
        """``(optimizer, seed, step)`` for every run that produced NaN/inf."""
        out = []
        for i, opt in enumerate(self.optimizers):
            for j, seed in enumerate(self.seeds):
                if self.diverged_at[i, j] >= 0:
                    out.append((opt, int(seed), int(self.diverged_at[i, j])))
        return out

    def divergence_messages(self) -> list[str]:
        """One line per diverged run, naming a rounded hyperparameter and the fix when the
        optimizer has one (a hyperparameter stored as 0 or 1 is the usual cause at low precision).
        """
        lines = []
        for opt, seed, step in self.diverged():
            line = f"diverged: {opt} seed {seed} at step {step}"
            rounded = self.rounded_hparams.get(opt)
            if rounded:  # each message carries its own fix (Precision.hparams_fix)
                line += f"; {'; '.join(rounded)}"
            lines.append(line)
        return lines
