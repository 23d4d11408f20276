"""Recipes end to end on tiny settings: run directory, findings, report, redraw, resume."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from optimorph import cli
from optimorph.experiments import recipes, tour
from optimorph.experiments.findings import NOT_JUDGED, OPEN
from optimorph.report.html import cell_text
from optimorph.report.recipe_report import write_recipe_report
from optimorph.results import store

TINY = {
    "batch-size": dict(batch_sizes=(8, 64), steps=300, test_sets=3, numpy_sample_steps=50,
                       optimorph_sample_steps=200, speed_pairs=3, workers=1),
    "stretched-moons": dict(epochs=2, seeds=2),
    "optimizer-tour": dict(steps=100, seeds=2),
    "linear-weights": dict(steps=40, n_train=500),
    "assumptions-convex": dict(datasets=("wine",), epochs=3, reference_steps=100, seeds=2),
    "assumptions-deep": dict(models=("mlp",), n_train=256, epochs=2, batch=64,
                             sharpness_every=4, seeds=1, schedules=("constant",)),
    "edge-of-stability": dict(n_train=200, lrs=(0.1, 0.4), steps=100, sharpness_every=20),
    "norms-least-squares": dict(lrs=(1e-3, 0.01), steps=30, seeds=1),
    "modular-norm": dict(p=7, steps=40, batch=16, seeds=1),
    "orthogonalization": dict(methods=("svd", "quintic", "polar-express"), shapes=((32, 16),),
                              repeats=1),
}  # fmt: skip
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_recipe_writes_findings_and_a_report_that_a_browser_shows(name, tmp_path, check_page):
    if name == "linear-weights" and not FASHION.exists() and not os.environ.get("OPTIMORPH_DATA"):
        pytest.skip("Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
    out = recipes.run_recipe(name, tmp_path / name, quick=True, progress=False, **TINY[name])
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "recipe" and config["format_version"] == store.FORMAT_VERSION
    assert config["recipe"] == name and config["quick"] is True
    findings = store.read_json(out, "findings")
    assert findings and all({"claim", "measured", "held"} <= set(f) for f in findings)
    for f in findings:  # every verdict prints the rule that decided it, threshold included
        assert f["rule"] or f["status"] == OPEN, f
        if f["rule"]:
            assert f"rule: {f['rule']}" in f["measured"] and re.search(r"\d", f["rule"]), f
        if not f["judged_at_quick"]:  # fixed per claim in the recipe: quick runs leave it
            assert f["status"] == NOT_JUDGED and f["held"] is None, f
    page = write_recipe_report(out)
    text = page.read_text()
    assert "Findings" in text and cell_text(findings[0]["claim"]) in text
    shown = check_page(page)
    assert shown["images"] >= 1
    assert not (out / ".lock").exists()


def test_batch_size_resumes_finished_cells_and_redraws_from_disk(tmp_path, monkeypatch):
    out = tmp_path / "bs"
    recipes.run_recipe("batch-size", out, quick=True, progress=False, **TINY["batch-size"])
    first = store.read_arrays(out, "cells/B8")
    (out / "report.html").unlink(missing_ok=True)
    calls = []
    monkeypatch.setattr(tour, "_batch_size_cell", lambda cell: calls.append(cell))
    # Finished cells are read back, not retrained; the report is rebuilt from the files.
    recipes.run_recipe("batch-size", out, quick=True, progress=False, resume=True,
                       **TINY["batch-size"])  # fmt: skip
    assert calls == []
    np.testing.assert_array_equal(store.read_arrays(out, "cells/B8")["train_loss"],
                                  first["train_loss"])  # fmt: skip
    assert cli.main(["report", str(out)]) == 0
    assert (out / "batch_size_boundaries.png").exists()


def test_an_out_directory_with_another_run_is_refused(tmp_path):
    out = tmp_path / "run"
    with store.claim(out, "recipe") as d:
        store.write_config(d, "recipe", {})
        with pytest.raises(store.RunDirError, match="being written by process"):
            with store.claim(out, "recipe"):
                pass
    with pytest.raises(store.RunDirError, match="already holds a recipe run; pass --resume"):
        with store.claim(out, "recipe"):
            pass
    with pytest.raises(store.RunDirError, match="holds a recipe run, not train"):
        with store.claim(out, "train", resume=True):
            pass
    with store.claim(out, "train", overwrite=True):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(store.RunDirError, match="is a file"):
        with store.claim(tmp_path / "file" / "run", "train"):
            pass
    with pytest.raises(store.RunDirError, match="give --out"):
        with store.claim("", "train"):
            pass
    empty = tmp_path / "failed-early"  # a run that failed before writing anything: reusable
    with store.claim(empty, "train"):
        pass
    with store.claim(empty, "train"):
        pass


def test_cli_lists_recipes_and_rejects_bad_settings(tmp_path, capsys):
    assert cli.main(["run"]) == 0
    listed = capsys.readouterr().out
    for name in ("batch-size", "stretched-moons", "linear-weights", "optimizer-tour", "proposal16"):
        assert name in listed
    assert cli.main(["run", "nope"]) == 2
    assert "unknown recipe 'nope'; registered: batch-size" in capsys.readouterr().err
    assert cli.main(["run", "batch-size", "--set", "stepz=3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown setting stepz" in capsys.readouterr().err


def test_scales_are_checked_against_what_each_recipe_offers():
    from optimorph.experiments.recipes import RECIPES, make_config, scales_of

    p16, tour = RECIPES.lookup("proposal16"), RECIPES.lookup("optimizer-tour")
    assert scales_of(p16) == ("quick", "medium", "full")
    assert scales_of(tour) == ("quick", "full")
    assert make_config(p16, scale="medium").scale == "medium"
    assert make_config(p16, quick=True).scale == "quick"
    with pytest.raises(ValueError, match="no scale 'medium'; it offers quick, full"):
        make_config(tour, scale="medium")
    with pytest.raises(ValueError, match="--quick and --scale full disagree"):
        make_config(p16, quick=True, scale="full")
    assert cli.main(["run", "proposal16", "--set", "scale='quick'"]) == 2


def test_cli_scale_option_names_the_run_directory(tmp_path, capsys, monkeypatch):
    import optimorph.experiments.recipes as recipes_module

    seen = {}

    def fake_run(name, out, **kw):
        seen.update(kw, out=str(out))
        raise SystemExit(0)

    monkeypatch.setattr(recipes_module, "run_recipe", fake_run)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["run", "proposal16", "--scale", "medium"])
    assert seen["scale"] == "medium" and seen["out"].endswith("proposal16-medium")
