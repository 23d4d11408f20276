"""Hyperparameter grids in spec strings: expansion, one program, the best point by the stated rule."""

import html
import json

import numpy as np
import pytest

import optimorph
from optimorph import cli
from optimorph.engine import trainer
from optimorph.optimizers.grid import expand
from optimorph.results.summary import summarize
from optimorph.spec import SpecError


def test_lists_and_ranges_expand_to_every_combination():
    g = expand("adam(lr=[1e-3, 3e-3], b1=linspace(0.8, 0.9, 3))")
    assert g.axes == {"lr": [1e-3, 3e-3], "b1": [0.8, 0.85, 0.9]}
    assert len(g.members) == 6 and g.members[0] == "adam(lr=0.001, b1=0.8)"
    assert g.members[-1] == "adam(lr=0.003, b1=0.9)"
    # logspace: both ends included, evenly spaced in log, 3 significant digits
    assert expand("sgd(lr=logspace(1e-4, 1e-2, 5))").axes["lr"] == [1e-4, 3.16e-4, 1e-3,
                                                                     3.16e-3, 1e-2]  # fmt: skip
    assert expand("sgd([0.1, 0.2])").members == ["sgd(lr=0.1)", "sgd(lr=0.2)"]
    assert expand("sgd(lr=0.1)").members == ["sgd(lr=0.1)"] and not expand("sgd").is_grid


@pytest.mark.parametrize(
    "text, message",
    [
        ("sgd(lr=[])", "at least one value"),
        ("sgd(lr=logspace(0, 1, 3))", "low, high > 0"),
        ("sgd(lr=logspace(1e-3, 1, 1))", "integer n >= 2"),
        ("sgd(lr=logspace(1e-3, 1))", "logspace(low, high, n)"),
        ("sgd(lr=linspace(0.1, 1, n=3))", "linspace(low, high, n)"),
        ("sgd(lr=[[0.1], 0.2])", "plain values"),
        ("adam(lr=linspace(0.1, 1, 40), b1=linspace(0.1, 0.9, 40))", "at most 1000"),
    ],
)
def test_malformed_grids_say_how_to_write_one(text, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(text)


def test_a_grid_where_one_value_is_needed_is_refused_by_name():
    with pytest.raises(SpecError, match="lr=.* is a grid of values; train runs grids"):
        optimorph.optimizer("sgd(lr=[0.1, 0.2])")


def test_a_grid_is_one_program_equal_to_separate_runs_and_its_best_point_follows_the_rule(
    monkeypatch,
):
    builds = []
    original = trainer._build_programs
    monkeypatch.setattr(trainer, "_build_programs", lambda *a: builds.append(1) or original(*a))
    prob = optimorph.problem("quadratic(dim=8, kappa=10)")
    kw = dict(seeds=2, steps=30, precision="fp64", eval_every=10, progress=False)
    r = optimorph.train(prob, "sgd(lr=[0.01, 0.1, 50.0])", **kw)
    assert len(builds) == 1, "a grid over numbers shares one compiled program"
    assert r.optimizers == ["sgd(lr=0.01)", "sgd(lr=0.1)", "sgd(lr=50.0)"]
    for i, spec in enumerate(r.optimizers):
        alone = optimorph.train(prob, spec, **kw)
        np.testing.assert_array_equal(r.train_loss[i], alone.train_loss[0])
    assert (r.diverged_at[2] >= 0).all(), "lr=50 diverges on a quadratic with L=1"

    summary = summarize(r)
    (grid,) = summary["grids"]
    assert grid["spec"] == "sgd(lr=[0.01, 0.1, 50.0])" and grid["metric"] == "train/loss"
    assert grid["rule"].startswith("by training-set loss at the last evaluation, lowest mean over "
                                   "2 seeds") and "no held-out data" in grid["rule"]  # fmt: skip
    finals = r.evals[grid["metric"]][:, :, -1].mean(axis=1)
    assert grid["means"][:2] == pytest.approx(finals[:2], rel=1e-12)
    assert grid["means"][2] is None  # every seed diverged: no mean, never the best
    assert grid["best"] == r.optimizers[int(np.argmin(finals[:2]))] == "sgd(lr=0.1)"


def test_the_command_line_prints_the_best_point_and_the_report_draws_the_grid(
    tmp_path, capsys, check_page
):
    out = tmp_path / "run"
    argv = ["train", "--problem", "two-moons(n=100)", "--optimizer",
            "adam(lr=logspace(1e-3, 1e-1, 3))", "--steps", "60", "--seeds", "2", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    (grid,) = summary["grids"]
    assert f"best of adam(lr=logspace(1e-3, 1e-1, 3)): {grid['best']}" in printed
    assert (out / "grids.png").exists()
    page = (out / "report.html").read_text()
    assert "← best" in page and html.escape(grid["rule"]) in page
    assert "no validation split" in grid["rule"], "two moons has held-out data: say how to use it"
    check_page(out / "report.html")
