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

    def diverged(self) -> list[tuple[str, int, int]]:
        """``(optimizer, seed, step)`` for every run that produced NaN/inf."""
        out = []
        for i, opt in enumerate(self.optimizers):
            for j, seed in enumerate(self.seeds):
                if self.diverged_at[i, j] >= 0:
                    out.append((opt, int(seed), int(self.diverged_at[i, j])))
        return out
