"""Final numbers of a run: per optimizer, statistics over seeds of each metric at the end.

The summary is a plain JSON-able dict (what ``summary.json`` holds and the HTML report tabulates):

```
{"wall_time": 12.3, "seeds": [0, 1, 2], "last_eval_step": 500, "train_window": [451, 500],
 "optimizers": [
   {"optimizer": "adam(lr=1e-3)", "index": 0,
    "final": {"train_step/loss": {"mean": .., "std": .., "min": .., "max": .., "n": 3},
              "test/accuracy": {...}, ...},
    "n_diverged": 1, "diverged": [{"seed": 2, "step": 37}]},
   ...]}
```

Statistics are taken over the seeds that did **not** diverge (``n`` says how many): a diverged run's
final values are NaN, or worse, finite and meaningless (the accuracy of NaN parameters is whatever
argmax makes of NaN logits). Diverged runs are listed separately with the step they broke at.
``std`` is the sample standard deviation (ddof=1), ``null`` with fewer than two seeds; any
undefined or non-finite number is ``null``, so the file is strict JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optimorph.engine.result import TrainResult
from optimorph.optimizers.grid import BEST_RULE, best_point

__all__ = [
    "TRAIN_SPLIT",
    "TRAIN_LOSS_KEY",
    "FINAL_FRACTION",
    "summarize",
    "final_values",
    "final_window",
    "seed_stats",
]

TRAIN_SPLIT = "train_step"
"""Split name of the per-step minibatch training loss (``TrainResult.train_loss``)."""
TRAIN_LOSS_KEY = f"{TRAIN_SPLIT}/loss"
GRID_METRIC = "train/loss"
"""What a grid's best point is chosen by: the loss on the whole training set at the last
evaluation (``optimorph.optimizers.grid.BEST_RULE``)."""
FINAL_FRACTION = 0.1
"""The final training loss is the mean over this last fraction of the logged steps: one minibatch
loss is too noisy to compare optimizers by."""


def summarize(result: TrainResult) -> dict[str, Any]:
    """The summary dict of ``result`` (format in the module docstring).

    Args:
      result: a finished run.

    Returns:
      A JSON-able dict.
    """
    finals = final_values(result)
    ok = result.diverged_at < 0  # [O, S]
    optimizers = []
    for i, name in enumerate(result.optimizers):
        diverged = [
            {"seed": int(seed), "step": int(result.diverged_at[i, j])}
            for j, seed in enumerate(result.seeds)
            if not ok[i, j]
        ]
        optimizers.append(
            {
                "optimizer": name,
                "index": i,
                "final": {key: seed_stats(values[i][ok[i]]) for key, values in finals.items()},
                "n_diverged": len(diverged),
                "diverged": diverged,
            }
        )
    steps = result.steps[final_window(result.steps)]
    out = {
        "wall_time": float(result.wall_time),
        "seeds": [int(s) for s in result.seeds],
        "last_eval_step": int(result.eval_steps[-1]) if result.eval_steps.size else None,
        "train_window": [int(steps[0]), int(steps[-1])] if steps.size else None,
        "optimizers": optimizers,
    }
    if result.config.get("grids"):
        out["grids"] = [_grid_summary(g, optimizers) for g in result.config["grids"]]
    return out


def _grid_summary(grid: dict[str, Any], optimizers: list[dict[str, Any]]) -> dict[str, Any]:
    """One grid's points with the metric BEST_RULE ranks by and the best point."""
    by_name = {o["optimizer"]: o for o in optimizers}
    rows = [by_name[m] for m in grid["members"]]
    metric = GRID_METRIC if all(GRID_METRIC in r["final"] for r in rows) else TRAIN_LOSS_KEY
    means = [r["final"][metric]["mean"] for r in rows]
    best = best_point(means, [r["n_diverged"] > 0 for r in rows])
    return {
        **grid,
        "metric": metric,
        "means": means,
        "rule": BEST_RULE,
        "best": None if best is None else grid["members"][best],
    }


def final_values(result: TrainResult) -> dict[str, np.ndarray]:
    """``{metric key: [O, S] final values}``: the training loss averaged over ``final_window``,
    each evaluation metric at the last evaluation. In float64 whatever the run's format: the
    summary should not add rounding of its own to the numbers it compares."""
    train = np.asarray(result.train_loss, dtype=np.float64)[:, :, final_window(result.steps)]
    finals = {TRAIN_LOSS_KEY: train.mean(axis=-1)}
    for key, values in result.evals.items():
        if values.size:
            finals[key] = np.asarray(values, dtype=np.float64)[:, :, -1]
    return finals


def final_window(steps: np.ndarray) -> slice:
    """The last ``FINAL_FRACTION`` of the logged steps, at least one."""
    return slice(len(steps) - max(1, math.ceil(FINAL_FRACTION * len(steps))), None)


def seed_stats(values: np.ndarray) -> dict[str, float | int | None]:
    """Mean, sample std, min, max and count of a 1-D array of per-seed values (JSON-able).

    >>> seed_stats(np.array([1.0, 2.0, 3.0]))
    {'mean': 2.0, 'std': 1.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    return {
        "mean": _number(values.mean()) if n else None,
        "std": _number(values.std(ddof=1)) if n > 1 else None,
        "min": _number(values.min()) if n else None,
        "max": _number(values.max()) if n else None,
        "n": n,
    }


def _number(x: np.floating) -> float | None:
    return float(x) if np.isfinite(x) else None
