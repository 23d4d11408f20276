"""Final numbers of a run: per optimizer, statistics over seeds of each metric at the end.

The summary is a plain JSON-able dict (what ``summary.json`` holds and the HTML report tabulates):

```
{"wall_time": 12.3, "seeds": [0, 1, 2], "last_eval_step": 500, "train_window": [451, 500],
 "optimizers": [
   {"optimizer": "adam(lr=1e-3)", "index": 0,
    "final": {"train_step/loss": {"mean": .., "std": .., "min": .., "max": .., "n": 3},
              "test/accuracy": {...}, ...},
    "n_diverged": 1, "diverged": [{"seed": 2, "step": 37}]},
   ...],
 "ranking": {"metric": "validation/loss", "means": [...], "order": ["adam(lr=1e-3)", ...],
             "rule": "by validation loss (10% of the training set, ...) ..."},
 "grids": [{"spec": ..., "members": [...], "axes": {...}, "metric": ..., "means": [...],
            "rule": ..., "best": "adam(lr=0.001)"}]}
```

Optimizers and each grid's points are ranked by one rule, :func:`rank`: the lowest mean final
validation loss when the problem holds a validation split out of its training set (the problem
option ``validation=FRACTION``), the training-set loss otherwise; ``rule`` is the sentence that
says which (metric, split, seeds), and the CLI and the report print it beside the choice.

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
from optimorph.problems.base import VALIDATION

__all__ = [
    "TRAIN_SPLIT",
    "TRAIN_LOSS_KEY",
    "RANK_METRICS",
    "FINAL_FRACTION",
    "summarize",
    "rank",
    "final_values",
    "final_window",
    "seed_stats",
    "final_table",
]

TRAIN_SPLIT = "train_step"
"""Split name of the per-step minibatch training loss (``TrainResult.train_loss``)."""
TRAIN_LOSS_KEY = f"{TRAIN_SPLIT}/loss"
RANK_METRICS = (f"{VALIDATION}/loss", "train/loss", TRAIN_LOSS_KEY)
"""What :func:`rank` ranks by, the first that every run has: the held-out validation loss, the
loss on the training set at the last evaluation, the minibatch loss of the last steps."""
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
    info = result.config.get("problem_info", {})
    ranking = rank(optimizers, n_seeds=len(result.seeds), problem_info=info)
    out["ranking"] = {**ranking, "order": [optimizers[i]["optimizer"] for i in ranking["order"]]}
    if result.config.get("grids"):
        by_name = {o["optimizer"]: o for o in optimizers}
        out["grids"] = []
        for grid in result.config["grids"]:
            points = rank([by_name[m] for m in grid["members"]], n_seeds=len(result.seeds),
                          problem_info=info)  # fmt: skip
            order = points.pop("order")
            out["grids"].append({**grid, **points,
                                 "best": grid["members"][order[0]] if order else None})  # fmt: skip
    return out


def rank(
    entries: list[dict[str, Any]], *, n_seeds: int, problem_info: dict[str, Any]
) -> dict[str, Any]:
    """The one ranking rule of optimizers and of a grid's points, and the sentence stating it.

    Ranked by the first of :data:`RANK_METRICS` that every entry has: the validation loss when
    the problem holds a validation split out of its training set (never the test set), else the
    training-set loss at the last evaluation, else the minibatch loss of the last steps. Lowest
    mean over seeds first; entries where a seed diverged are left out, as are entries without a
    finite mean; ties keep the entries' order.

    Args:
      entries: the summary's per-optimizer entries (``final``, ``n_diverged``).
      n_seeds: seeds per optimizer in the run.
      problem_info: the problem's ``info`` (``validation`` and ``n_validation`` when it has a
        validation split).

    Returns:
      ``{"metric": key, "means": [mean per entry or None], "order": [entry indices, best first],
      "rule": "by validation loss (...) ..."}``.

    >>> entries = [{"final": {"train/loss": {"mean": m}, "validation/loss": {"mean": v}},
    ...             "n_diverged": 0} for m, v in [(0.1, 0.5), (0.2, 0.3)]]
    >>> r = rank(entries, n_seeds=3, problem_info={"validation": 0.1, "n_validation": 50})
    >>> r["metric"], r["order"]
    ('validation/loss', [1, 0])
    >>> r["rule"][:66]
    'by validation loss (10% of the training set, 50 examples, held out'
    """
    metric = next(k for k in RANK_METRICS if all(k in e["final"] for e in entries))
    means = [e["final"][metric]["mean"] for e in entries]
    ok = [i for i, e in enumerate(entries) if means[i] is not None and not e["n_diverged"]]
    order = sorted(ok, key=lambda i: means[i])
    splits = {k.split("/")[0] for e in entries for k in e["final"]}
    held_out = bool(splits - {"train", TRAIN_SPLIT})
    return {"metric": metric, "means": means, "order": order,
            "rule": _rule(metric, n_seeds, problem_info, held_out)}  # fmt: skip


def _rule(metric: str, n_seeds: int, info: dict[str, Any], held_out: bool) -> str:
    """The sentence :func:`rank` chose by: metric, split, seeds, what was left out."""
    seeds = f"lowest mean over {n_seeds} seed{'s' * (n_seeds != 1)}"
    tail = f"{seeds}, among those where no seed diverged"
    if metric.startswith(f"{VALIDATION}/"):
        return (f"by validation loss ({100 * info.get('validation', math.nan):g}% of the training "
                f"set, {info.get('n_validation', '?')} examples, held out from training; not the "
                f"test set) at the last evaluation, {tail}")  # fmt: skip
    why = ("the problem has no validation split, and the training loss rewards overfitting; "
           "validation=0.1 in the problem's spec holds 10% of the training set out to rank by"
           if held_out else "the problem has no held-out data")  # fmt: skip
    if metric == TRAIN_LOSS_KEY:
        return (f"by the minibatch training loss averaged over the last {FINAL_FRACTION:.0%} of "
                f"steps (no evaluation was run), {tail} ({why})")  # fmt: skip
    return f"by training-set loss at the last evaluation, {tail} ({why})"


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


def final_table(result: TrainResult) -> str:
    """The final held-out metrics by the summary's rule, as printed after a run: mean and sample
    std over the seeds that did not diverge, each grid's best point, and the ranking."""
    summary = summarize(result)
    keys = [k for k in result.evals if k.startswith(("test", "validation"))] or list(result.evals)
    header = f"{'optimizer':<48}" + "".join(f"{k:>22}" for k in keys)
    lines = [header + "   (mean ± sample std over seeds that did not diverge)"]
    for entry in summary["optimizers"]:
        row = f"{entry['optimizer'][:47]:<48}"
        for k in keys:
            s = entry["final"].get(k, {})
            mean = "-" if s.get("mean") is None else f"{s['mean']:.4f}"
            std = "" if s.get("std") is None else f"±{s['std']:.4f}"
            row += f"{mean:>14} {std:<7}"
        lines.append(row)
    for g in summary.get("grids", ()):
        i = g["members"].index(g["best"]) if g["best"] is not None else None
        best = "every point diverged" if i is None else (
            f"{g['best']} (final {g['metric']} {g['means'][i]:.4g})")  # fmt: skip
        lines.append(f"best of {g['spec']}: {best}, best {g['rule']}")
    ranking = summary["ranking"]
    if not summary.get("grids") and len(result.optimizers) > 1 and ranking["order"]:
        lines.append(f"ranked {ranking['rule']}: {', then '.join(ranking['order'])}")
    return "\n".join(lines)
