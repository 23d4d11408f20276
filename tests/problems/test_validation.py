"""The validation split: carved from the training set, disjoint from what trains and from the test
sets, deterministic in the problem's seed, and absent (the problem unchanged) by default."""

import jax
import numpy as np
import pytest

import optimorph
from optimorph.engine import trainer
from optimorph.precision import precision as make_precision
from optimorph.problems import list_problems, problem
from optimorph.spec import SpecError


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(x)}


def test_the_split_is_the_training_set_cut_in_two_and_disjoint_from_training_and_test():
    whole = problem("two-moons(n=200, flip=0.1)")
    split = problem("two-moons(n=200, flip=0.1, validation=0.15)")
    assert split.name == "two-moons(n=200, noise=0.1, flip=0.1, validation=0.15)"
    (xv, yv), (xt, yt) = split.evals["validation"], split.train
    assert len(yv) == 30 and len(yt) == 170 == split.info["n_train"]
    assert split.info["n_validation"] == 30 and split.info["validation"] == 0.15
    # Every original example lands in exactly one part, with its label (flipped ones included).
    pairs = lambda x, y: {(r.tobytes(), int(c)) for r, c in zip(x, y)}  # noqa: E731
    assert pairs(xv, yv) | pairs(xt, yt) == pairs(*whole.train)
    assert not _rows(xv) & _rows(xt)
    # Both parts keep the training set's order.
    index = {r.tobytes(): i for i, r in enumerate(whole.train[0])}
    assert np.all(np.diff([index[r.tobytes()] for r in xt]) > 0)
    # The test sets are the problem's own, untouched, and share no point with the validation set.
    for name in ("test", "test_noisy"):
        np.testing.assert_array_equal(split.evals[name][0], whole.evals[name][0])
        assert not _rows(split.evals[name][0]) & _rows(xv)
    # What the compiled trainer trains on (and evaluates as "train") holds no validation example.
    data = trainer._device_data(split, make_precision("fp32"))
    assert not _rows(np.asarray(data["train"][0])) & _rows(xv)
    assert not _rows(np.asarray(data["evals"]["train"][0])) & _rows(xv)
    np.testing.assert_array_equal(np.asarray(data["evals"]["validation"][0]), xv)


def test_the_split_depends_on_the_seed_only():
    a = problem("two-moons(n=100, validation=0.2)")
    b = problem("two-moons(n=100, validation=0.2)")
    for x, y in zip(a.evals["validation"], b.evals["validation"]):
        np.testing.assert_array_equal(x, y)
    other = problem("two-moons(n=100, validation=0.2, seed=1)")
    assert not np.array_equal(a.evals["validation"][0], other.evals["validation"][0])


def test_validation_is_an_argument_of_problems_with_data_only():
    params = {i.name: [str(p) for p in i.params] for i in list_problems()}
    assert "validation: float = 0.0" in params["two-moons"]
    assert "validation: float = 0.0" in params["logistic"]
    assert not any(p.startswith("validation") for p in params["quadratic"])
    with pytest.raises(SpecError, match="quadratic has no argument validation"):
        problem("quadratic(validation=0.1)")
    with pytest.raises(SpecError, match="validation=1.0 is out of range: valid is 0 <= valid"):
        problem("two-moons(validation=1)")
    with pytest.raises(SpecError, match="too few"):
        problem("least-squares(n=1, validation=0.5)")


def test_without_the_option_a_run_is_bit_identical():
    plain, zero = problem("two-moons(n=100)"), problem("two-moons(n=100, validation=0)")
    assert plain.name == zero.name and sorted(plain.evals) == sorted(zero.evals)
    assert plain.info == zero.info
    for a, b in zip(plain.train, zero.train):
        np.testing.assert_array_equal(a, b)
    kw = dict(seeds=2, steps=40, batch_size=16, precision="fp32", eval_every=20, progress=False)
    r0 = optimorph.train(plain, "adam(lr=1e-2)", **kw)
    r1 = optimorph.train(zero, "adam(lr=1e-2)", **kw)
    np.testing.assert_array_equal(r0.train_loss, r1.train_loss)
    assert r0.evals.keys() == r1.evals.keys() and "validation/loss" not in r0.evals
    for key in r0.evals:
        np.testing.assert_array_equal(r0.evals[key], r1.evals[key])
    # With a split, validation metrics are evaluated like the test metrics.
    r2 = optimorph.train(problem("two-moons(n=100, validation=0.2)"), "adam(lr=1e-2)", **kw)
    assert {"validation/loss", "validation/accuracy"} <= r2.evals.keys()
    assert r2.evals["validation/loss"].shape == r2.evals["test/loss"].shape
    params = jax.tree.map(lambda a: a[0], r2.final_params[0])  # seed 0
    x, y = problem("two-moons(n=100, validation=0.2)").evals["validation"]
    direct = problem("two-moons(n=100)").evaluate(params, (x, y))
    assert r2.evals["validation/loss"][0, 0, -1] == pytest.approx(float(direct["loss"]), rel=1e-5)
