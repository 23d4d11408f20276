"""The mxfp4-training recipe: one real training cell of a keyed policy (noise replicas drawing
the run's stochastic-rounding keys), and the recipe end to end on made-up runs whose verdicts
are known: verdict table, curves, findings whose rules are printed, and a page a browser shows."""

from types import SimpleNamespace

import numpy as np
import pytest

from optimorph.experiments import cells, recipes
from optimorph.experiments.cells import Cell
from optimorph.experiments.findings import FAILED, HELD, NOT_JUDGED, OPEN
from optimorph.experiments.mxfp4_training import VARIANTS, policy
from optimorph.report.recipe_report import write_recipe_report
from optimorph.results import store


def test_a_cell_with_mxfp4_gradients_trains_with_noise_replicas():
    cell = Cell("ls", "least-squares(n=32, d=40)", ("adam(lr=1e-3)",), policy("sr-rht"), 2, 8, 8,
                4, 1)
    runs = cells.train_cell(cell)
    r = runs.result
    assert r.trajectory.shape[:3] == (1, 2, 3) and r.eval_steps.tolist() == [0, 4, 8]
    assert np.isfinite(r.trajectory).all() and (r.diverged_at == -1).all()
    assert (runs.floor[0, :, 1:] > 0).all() and np.isfinite(runs.floor).all()
    assert set(r.evals) == {"test/loss", "train/loss"}


T = np.arange(0, 50, 10)  # evaluation steps
DRIFT = {"bf16": 0.0, "rtn": 1.0, "sr": 0.2, "sr-rht": 0.05, "sr-hadamard": 0.1,
         "bwd-rtn": 1.0, "bwd-sr": 0.2, "bwd-sr-rht": 0.05, "bwd-sr-had": 0.03,
         "gemms": 0.5}  # fmt: skip


def fake_cell(cell: Cell) -> SimpleNamespace:
    """A made-up run: parameters drifting from the reference's by DRIFT[variant] * t (floor 1),
    test loss DRIFT higher; 'sr' blows up (NaN) after step 30 in seed 1."""
    variant = next(v for v in VARIANTS if policy(v) == cell.precision)
    seeds, drift = len(cell.seeds), DRIFT[variant]
    traj = np.zeros((1, seeds, len(T), 4))
    traj[..., 0] = 100.0 + drift * T  # ||theta|| about 100: u ||theta|| = 0.39 < floor 1
    loss = np.tile(1.0 + drift + 0.01 * np.arange(seeds)[:, None], (1, 1, len(T)))
    diverged = np.full((1, seeds), -1)
    if variant == "sr":
        traj[0, 1, 4:] = np.nan
        loss[0, 1, 4:] = np.nan
        diverged[0, 1] = 33
    result = SimpleNamespace(
        trajectory=traj, diverged_at=diverged, eval_steps=T, evals={"test/loss": loss},
        stalled=None,
        config={"state_bytes_per_param": [8.0]},
    )  # fmt: skip
    ones = np.ones((1, seeds, len(T)))
    return SimpleNamespace(result=result, floor=ones, norm=ones * 100.0)


def test_the_recipe_stores_verdicts_curves_findings_and_a_page(tmp_path, monkeypatch, check_page):
    monkeypatch.setattr(cells, "train_cell", fake_cell)
    out = recipes.run_recipe(
        "mxfp4-training", tmp_path / "run", progress=False, models=("mlp",),
        mlp_problem="digits(model=mlp, widths=[8])", variants=tuple(DRIFT), seeds=3,
        workers=1,
    )  # fmt: skip
    rows = {r["variant"]: r for r in store.read_json(out, "table_verdicts")}
    assert list(rows) == list(DRIFT)
    ref, rtn, sr, rht = rows["bf16"], rows["rtn"], rows["sr"], rows["sr-rht"]
    assert ref["d/floor"] == 0.0 and ref["verdict"] == "equivalent"
    assert ref["parts at step"] == "never" and ref["blew up at step"] == "never"
    assert rtn["d/floor"] == 40.0 and rtn["verdict"] == "different"
    assert rtn["parts at step"] == 20  # d = t: first above C = 10 at t = 20
    assert rht["d/floor"] == 2.0 and rht["verdict"] == "equivalent"
    assert sr["verdict"].startswith("different") and sr["blew up at step"] == 33
    assert sr["d/floor"] == 6.0 and sr["gap to bf16"] == "n/a"  # the broken seed: NaN
    assert rtn["gap to bf16"] == pytest.approx(1.0)
    policies = {r["variant"]: r["precision policy"] for r in store.read_json(out, "table_variants")}
    assert policies["sr-rht"] == policy("sr-rht") == (
        "bf16,grads=mxfp4(rounding=stochastic,scale=ceil,transform=rht),state=fp32"
    )
    assert set(VARIANTS) == {"bf16", "rtn", "sr", "sr-rht", "sr-hadamard", "rtn-rht",
                             "rtn-hadamard", "bwd-rtn", "bwd-sr", "bwd-sr-rht",
                             "bwd-sr-had", "gemms"}  # fmt: skip
    assert policy("bwd-sr-rht") == (
        "bf16,state=fp32,backward=mxfp4(rounding=stochastic,scale=ceil,transform=rht)"
    )
    curves = store.read_arrays(out, "curves_mlp")
    assert curves["t"].tolist() == T.tolist()
    np.testing.assert_array_equal(curves["ratio/rtn"], T.astype(float))
    findings = store.read_json(out, "findings")
    # rtn parts; sr-rht stays; its gap 0.05 < 5% of 1.06, no spread: TOST holds; rtn's gap > 0;
    # sr's gap is NaN (a seed broke): open; sr-hadamard's gap 0.1 > sr-rht's 0.05: fails;
    # the backward products: bwd-sr-rht stays and is lossless, bwd-rtn parts and costs, bwd-sr's gap
    # 0.2 > 0.05, bwd-sr-had's 0.03 <= 0.05; gemms parts (d/floor 20)
    assert [f["status"] for f in findings] == [HELD, HELD, HELD, HELD, OPEN, FAILED] + [
        HELD] * 6 + [FAILED]  # fmt: skip
    for f in findings:
        assert f["claim"].startswith("[mlp] ") and f"rule: {f['rule']}" in f["measured"]
    quick = recipes.run_recipe(
        "mxfp4-training", tmp_path / "quick", quick=True, progress=False,
        mlp_problem="digits(model=mlp, widths=[8])", seeds=3, workers=1,
    )  # fmt: skip
    judged = [f["status"] != NOT_JUDGED for f in store.read_json(quick, "findings")]
    assert judged == [True, True, False, False, False, False,  # the stored gradient
                      False, True, False, False, False, False, False]  # backward, gemms
    page = write_recipe_report(out)
    assert (out / "mxfp4_training.png").exists() and "Table: verdicts" in page.read_text()
    assert check_page(page)["images"] >= 1


def test_an_interrupted_run_resumes_its_finished_cells(tmp_path, monkeypatch):
    settings = dict(progress=False, models=("mlp",), mlp_problem="digits(model=mlp, widths=[8])",
                    variants=("bf16", "rtn", "sr-rht"), seeds=2, workers=1)  # fmt: skip
    calls = []

    def failing(cell):
        calls.append(cell.precision)
        if cell.precision == policy("sr-rht"):
            raise KeyboardInterrupt
        return fake_cell(cell)

    monkeypatch.setattr(cells, "train_cell", failing)
    with pytest.raises(KeyboardInterrupt):
        recipes.run_recipe("mxfp4-training", tmp_path / "run", **settings)
    assert sorted(p.name for p in (tmp_path / "run" / "cells").iterdir()) == [
        "mlp-bf16.npz", "mlp-rtn.npz"
    ]
    calls.clear()
    monkeypatch.setattr(cells, "train_cell", lambda c: calls.append(c.precision) or fake_cell(c))
    out = recipes.run_recipe("mxfp4-training", tmp_path / "run", resume=True, **settings)
    assert calls == [policy("sr-rht")] and not (out / "cells").exists()
    fresh = recipes.run_recipe("mxfp4-training", tmp_path / "fresh", **settings)
    assert store.read_json(out, "table_verdicts") == store.read_json(fresh, "table_verdicts")
