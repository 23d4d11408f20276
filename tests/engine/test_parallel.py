"""Sweep cells on worker processes: same results as in-process, errors name the cell."""

import os

import numpy as np
import pytest

from optimorph.engine.parallel import map_cells


def _train_cell(batch):
    import optimorph

    r = optimorph.train("two-moons(n=64)", "sgd(lr=0.1)", steps=20, batch_size=batch,
                        precision="fp64", progress=False)  # fmt: skip
    return r.train_loss, os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _fail(x):
    raise ValueError("bad cell")


def test_cells_on_two_processes_equal_in_process_runs_bit_for_bit():
    here = map_cells(_train_cell, [4, 8], workers=1)
    seen = []
    there = map_cells(_train_cell, [4, 8], workers=2, on_result=lambda i, r: seen.append(i))
    for (a, _), (b, affinity) in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)  # float64 carried into the workers
        if affinity is not None:
            assert len(affinity) == 1  # pinned to one core
    assert sorted(seen) == [0, 1]


def test_a_failing_cell_is_named():
    with pytest.raises(ValueError, match="bad cell") as info:
        map_cells(_fail, [1, 2], workers=2)
    assert any("in sweep cell" in note for note in info.value.__notes__)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        map_cells(abs, [1], workers=0)
