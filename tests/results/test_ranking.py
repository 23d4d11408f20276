"""The one ranking rule (results.summary.rank): held-out validation loss when the problem has a
validation split, the training-set loss otherwise, and a sentence saying which."""

import json

import numpy as np
import pytest

import optimorph
from optimorph import cli
from optimorph.results.summary import rank, summarize


def _entries(finals: dict[str, list[float | None]], diverged=None) -> list[dict]:
    n = len(next(iter(finals.values())))
    diverged = diverged or [0] * n
    return [{"final": {k: {"mean": v[i]} for k, v in finals.items()}, "n_diverged": diverged[i]}
            for i in range(n)]  # fmt: skip


def test_validation_loss_decides_where_it_and_the_training_loss_disagree():
    entries = _entries({"train/loss": [0.30, 0.10, 0.20], "validation/loss": [0.40, 0.90, 0.50],
                        "test/loss": [0.1, 0.1, 0.1], "train_step/loss": [0.3, 0.1, 0.2]})
    r = rank(entries, n_seeds=5, problem_info={"validation": 0.1, "n_validation": 50})
    assert r["metric"] == "validation/loss" and r["order"] == [0, 2, 1]
    assert r["means"] == [0.40, 0.90, 0.50]
    assert r["rule"].startswith("by validation loss (10% of the training set, 50 examples, held "
                                "out from training; not the test set)")  # fmt: skip
    assert "over 5 seeds" in r["rule"] and "diverged" in r["rule"]


def test_without_a_split_the_training_loss_decides_and_the_sentence_says_so():
    with_test = _entries({"train/loss": [0.3, 0.1, 0.2], "test/loss": [0.1, 0.9, 0.5],
                          "train_step/loss": [0.3, 0.1, 0.2]})  # fmt: skip
    r = rank(with_test, n_seeds=1, problem_info={})
    assert r["metric"] == "train/loss" and r["order"] == [1, 2, 0]
    assert r["rule"].startswith("by training-set loss at the last evaluation, lowest mean over 1 "
                                "seed,")  # fmt: skip
    assert "no validation split" in r["rule"] and "validation=0.1" in r["rule"]
    # No held-out data at all (a quadratic): no advice to add a split it cannot have.
    bare = rank(_entries({"train/loss": [0.3, 0.1]}), n_seeds=2, problem_info={})
    assert bare["order"] == [1, 0] and "the problem has no held-out data" in bare["rule"]
    # No evaluation at all: the minibatch loss of the last steps.
    steps = rank(_entries({"train_step/loss": [0.3, 0.1]}), n_seeds=2, problem_info={})
    assert steps["metric"] == "train_step/loss" and "minibatch" in steps["rule"]


def test_diverged_and_undefined_entries_are_never_ranked_and_ties_keep_the_order():
    entries = _entries({"validation/loss": [0.5, 0.1, None, 0.5]}, diverged=[0, 1, 0, 0])
    r = rank(entries, n_seeds=3, problem_info={"validation": 0.2, "n_validation": 4})
    assert r["order"] == [0, 3]
    none = rank(_entries({"train/loss": [None]}, diverged=[2]), n_seeds=2, problem_info={})
    assert none["order"] == []


@pytest.fixture(scope="module")
def overfit():
    """Noisy two moons, full batch: a large Adam step fits the flipped labels (lowest training
    loss), a small one does not (lowest validation loss)."""
    return optimorph.train("two-moons(n=200, flip=0.1, validation=0.2)",
                           "adam(lr=[1e-4, 3e-2])", seeds=2, steps=1500, eval_every=500,
                           precision="fp32", progress=False)  # fmt: skip


def test_a_real_grid_is_ranked_by_validation_loss_not_by_the_training_loss_it_overfits(overfit):
    r = overfit
    summary = summarize(r)
    (grid,) = summary["grids"]
    train, val = (r.evals[k][:, :, -1].mean(axis=1) for k in ("train/loss", "validation/loss"))
    assert np.argmin(train) != np.argmin(val), "the case must separate the two rules"
    assert grid["metric"] == "validation/loss"
    assert grid["means"] == pytest.approx(val, rel=1e-12)
    assert grid["best"] == r.optimizers[int(np.argmin(val))] == "adam(lr=0.0001)"
    assert grid["rule"].startswith("by validation loss (20% of the training set, 40 examples")
    assert summary["ranking"]["order"][0] == grid["best"]
    # The held-out choice generalizes better on the clean test set, as it should.
    acc = r.evals["test/accuracy"][:, :, -1].mean(axis=1)
    assert acc[np.argmin(val)] > acc[np.argmin(train)]


def test_the_command_line_and_the_report_state_the_rule_beside_the_choice(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--problem", "two-moons(n=100, validation=0.2)", "--optimizer",
            "adam(lr=[1e-3, 1e-2])", "--optimizer", "sgd(lr=0.1)", "--steps", "40", "--seeds",
            "2", "--quiet", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    (grid,) = summary["grids"]
    line = next(s for s in printed.splitlines() if s.startswith("best of adam"))
    assert f": {grid['best']} (final validation/loss " in line
    assert line.endswith(f", best {grid['rule']}") and "validation loss (20%" in line
    page = (out / "report.html").read_text()
    assert "best by validation loss (20% of the training set, 20 examples" in page
    # Without a grid, the optimizers are ranked by the same rule, stated in the same sentence.
    zoo = tmp_path / "zoo"
    argv = ["train", "--problem", "two-moons(n=100, validation=0.2)", "--optimizer",
            "adam(lr=1e-2)", "--optimizer", "sgd(lr=0.1)", "--steps", "40", "--seeds", "2",
            "--quiet", "--out", str(zoo)]  # fmt: skip
    assert cli.main(argv) == 0
    ranking = json.loads((zoo / "summary.json").read_text())["ranking"]
    assert ranking["metric"] == "validation/loss"
    printed = capsys.readouterr().out
    assert f"ranked {ranking['rule']}: {', then '.join(ranking['order'])}" in printed
    assert f"Ranked {ranking['rule']}: <code>{ranking['order'][0]}</code>" in (
        zoo / "report.html").read_text()


def test_a_summary_written_before_rankings_were_stored_still_reports(tmp_path, result):
    """Older run directories have no 'ranking' in summary.json: it is derived again from the
    stored metrics, the same as a fresh summary's."""
    import json

    from optimorph.results.rundir import read_summary, write_run

    write_run(result, tmp_path / "run")
    path = tmp_path / "run" / "summary.json"
    fresh = json.loads(path.read_text())
    old = {k: v for k, v in fresh.items() if k != "ranking"}
    path.write_text(json.dumps(old))
    assert read_summary(tmp_path / "run")["ranking"] == fresh["ranking"]
