"""A synthetic TrainResult (2 optimizers, 3 seeds, 50 steps, 6 evaluations, one diverged run)."""

import numpy as np
import pytest

from optimorph.engine.result import TrainResult
from optimorph.problems.base import Problem

# '<' and '>' in a spec exercise HTML escaping; '$' exercises matplotlib's math-text escaping.
OPTIMIZERS = ["adam(lr=1e-3)", "sgd<momentum>(lr=$0.1)"]
SEEDS = [0, 1, 7]
DIVERGED = (1, 1, 23)  # optimizer index, seed index, first bad step


def make_result(scale: float = 1.0) -> TrainResult:
    """Loss curves decaying with noise; run DIVERGED turns inf then NaN from its bad step on."""
    rng = np.random.default_rng(0)
    steps = np.arange(1, 51)
    eval_steps = np.arange(0, 51, 10)
    o, s = len(OPTIMIZERS), len(SEEDS)
    decay = np.exp(-steps / 20.0)
    train_loss = scale * (decay * rng.lognormal(0.0, 0.1, (o, s, steps.size))).astype(np.float32)
    test_loss = scale * (1.0 + np.exp(-eval_steps / 20.0) * rng.lognormal(0.0, 0.1, (o, s, 6)))
    train_eval = 0.9 * test_loss
    accuracy = np.clip(0.5 + eval_steps / 120.0 + rng.normal(0.0, 0.02, (o, s, 6)), 0.0, 1.0)
    diverged_at = np.full((o, s), -1)
    i, j, bad = DIVERGED
    diverged_at[i, j] = bad
    train_loss[i, j, bad - 1] = np.inf
    train_loss[i, j, bad:] = np.nan
    after = eval_steps >= bad
    test_loss[i, j, after] = np.nan
    train_eval[i, j, after] = np.nan
    # NaN parameters give a finite, meaningless accuracy (argmax of NaN logits): the summary must
    # leave the run out because it diverged, not because its value is NaN.
    accuracy[i, j, after] = 0.5
    return TrainResult(
        optimizers=list(OPTIMIZERS),
        seeds=list(SEEDS),
        steps=steps,
        train_loss=train_loss,
        eval_steps=eval_steps,
        evals={"train/loss": train_eval, "test/loss": test_loss, "test/accuracy": accuracy},
        diverged_at=diverged_at,
        wall_time=12.5,
        config={
            "problem": "two-moons(n=500)",
            "optimizers": list(OPTIMIZERS),
            "precision": "fp32",
            "steps": 50,
            "batch_size": 32,
        },
    )


@pytest.fixture(scope="module")
def result() -> TrainResult:
    return make_result()


@pytest.fixture(scope="module")
def scaled_result() -> TrainResult:
    """The same run with every loss doubled: a second run directory for queries."""
    return make_result(scale=2.0)


@pytest.fixture(scope="module")
def stub_problem() -> Problem:
    """The smallest Problem a run directory can record (two-moons' name, a test split)."""
    return Problem.from_functions(
        lambda key: {"w": np.zeros(2, np.float32)},
        lambda params, batch: 0.0,
        (np.ones((8, 2), np.float32), np.zeros(8, np.int32)),
        name="two-moons(n=500)",
        evals={"test": (np.ones((4, 2), np.float32), np.zeros(4, np.int32))},
    )
