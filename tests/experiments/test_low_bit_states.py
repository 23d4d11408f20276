"""The low-bit-states recipe end to end at its quick settings: stored files, findings, report."""

import pytest

from optimorph.experiments import recipes
from optimorph.experiments.findings import NOT_JUDGED, STATUSES
from optimorph.experiments.low_bit_states import LowBitConfig, policy
from optimorph.report.recipe_report import write_recipe_report
from optimorph.results import store


def test_the_quick_variant_stores_verdicts_findings_and_a_frontier(tmp_path):
    out = recipes.run_recipe("low-bit-states", tmp_path / "run", quick=True, progress=False)
    config = store.read_json(out, "config")
    assert config["recipe"] == "low-bit-states" and config["quick"] is True
    quick = LowBitConfig.quick()
    rows = store.read_json(out, "table_verdicts")
    assert len(rows) == len(quick.heteros) * len(quick.states)  # one optimizer, one params format
    for r in rows:
        assert r["policy"] == policy(r["params"], r["states"])
        if r["states"] == "fp32":  # the reference against itself
            assert r["d_floor"] == 0.0 and r["outcome"] == "equivalent"
    memory = {r["states"]: r["bytes_per_param"] for r in rows}
    assert memory == {"fp32": 8.0, "bnb8": 2 * (1 + 4 / 256), "mxfp8": 2 * (1 + 1 / 32)}
    findings = store.read_json(out, "findings")
    assert len(findings) == 12
    for f in findings:
        assert f["status"] in STATUSES and f["measured"]
        if not f["judged_at_quick"]:
            assert f["status"] == NOT_JUDGED
    judged = [f for f in findings if f["judged_at_quick"]]
    assert any("8-bit blockwise Adam" in f["claim"] for f in judged)
    page = write_recipe_report(out).read_text(encoding="utf-8")
    assert (out / "low_bit_frontier.png").exists() and 'alt="low_bit_frontier.png"' in page
    assert "Table: verdicts" in page and "C = 10, the equivalence threshold" in page


def test_a_verdict_of_different_for_any_reason_fails_a_p_equivalence_claim():
    # A low-bit run that blew up by the engine's loss rule keeps finite parameters and a finite
    # d/floor; "different (final loss)" has one too. Neither is p-equivalent, whatever d/floor.
    from optimorph.experiments.findings import FAILED, HELD
    from optimorph.experiments.low_bit_states import findings

    config = LowBitConfig.quick()
    rows = []
    for h in config.heteros:
        for state, outcome in (("fp32", "equivalent"), ("bnb8", "different (low-bit run "
                               "diverged)"), ("mxfp8", "different (final loss)")):  # fmt: skip
            rows.append({"problem": f"least squares h={h:g}", "h": h,
                         "optimizer": config.optimizers[0], "params": "bf16", "states": state,
                         "d_floor": 0.0 if state == "fp32" else 1.5, "outcome": outcome,
                         "final_loss": 1.0, "final_diff": 0.1, "diff_ci_low": 0.05,
                         "diff_ci_high": 0.15, "tost_p": 0.9, "bytes_per_param": 2.0})  # fmt: skip
    claims = {f["claim"]: f["status"] for f in findings(config, rows)}
    bnb = next(s for c, s in claims.items() if c.startswith("8-bit blockwise Adam"))
    mx = next(s for c, s in claims.items() if c.startswith("MXFP8"))
    assert bnb == FAILED and mx == FAILED
    rows[1]["outcome"] = rows[2]["outcome"] = "equivalent"
    claims = {f["claim"]: f["status"] for f in findings(config, rows)}
    assert next(s for c, s in claims.items() if c.startswith("8-bit blockwise Adam")) == HELD


def test_a_killed_run_resumes_its_finished_cells_with_the_same_verdicts(tmp_path, monkeypatch):
    # Real training cells: the second state's cell is interrupted; the rerun trains only it and
    # reads the first from its file, and the verdicts equal an uninterrupted run's.
    from optimorph.experiments import cells

    settings = dict(progress=False, heteros=(1.0,), params=("bf16",), states=("fp32", "bnb8"),
                    seeds=2,
                    steps=40, evals=4, replicas=1, mlp=False, workers=1)  # fmt: skip
    real, trained = cells.train_cell, []

    def interrupted(cell):
        if cell.precision == policy("bf16", "bnb8"):
            raise KeyboardInterrupt
        return real(cell)

    monkeypatch.setattr(cells, "train_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recipes.run_recipe("low-bit-states", tmp_path / "run", **settings)
    assert [p.name for p in (tmp_path / "run" / "cells").iterdir()] == ["ls-h1-bf16-fp32.npz"]
    monkeypatch.setattr(cells, "train_cell", lambda c: trained.append(c.name) or real(c))
    with pytest.raises(store.RunDirError, match="trained with other settings"):
        recipes.run_recipe("low-bit-states", tmp_path / "run", resume=True,
                           **{**settings, "steps": 30})  # a finished cell is not reused
    assert trained == []
    out = recipes.run_recipe("low-bit-states", tmp_path / "run", resume=True, **settings)
    assert trained == ["ls-h1-bf16-bnb8"] and not (out / "cells").exists()
    trained.clear()
    fresh = recipes.run_recipe("low-bit-states", tmp_path / "fresh", **settings)
    assert len(trained) == 2
    rows = store.read_json(out, "table_verdicts")
    assert rows == store.read_json(fresh, "table_verdicts")
    for r in rows:  # bf16 parameters absorb some of Adam's updates from the first steps on
        assert 0 < r["stalled_ref"] <= 1 and 0 < r["stalled"] <= 1


def test_a_stalled_reference_fails_the_headline_check():
    # compare's stall rule on the fp32-state reference at the headline's h and parameters:
    # mean fraction of absorbed updates above the stall limit (0.5) means stagnation.
    from optimorph.experiments.findings import FAILED, HELD, OPEN
    from optimorph.experiments.low_bit_states import findings

    config = LowBitConfig()
    ref = {"problem": "least squares h=1", "h": 1.0, "optimizer": config.optimizers[0],
           "params": "bf16", "states": "fp32", "d_floor": 0.0, "outcome": "equivalent",
           "final_loss": 1.0, "final_diff": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0,
           "tost_p": 0.0, "bytes_per_param": 8.0, "stalled_ref": 0.65, "stalled": 0.65}

    def status(stalled):
        rows = [dict(ref, stalled_ref=stalled, stalled=stalled)]
        first = findings(config, rows)[0]
        assert first["claim"].startswith("the headline's reference is not stalled")
        return first["status"]

    assert (status(0.65), status(0.2), status(None)) == (FAILED, HELD, OPEN)


def test_a_state_kept_in_float32_is_set_aside_from_the_fp32_parameter_claim():
    """bnb8-lib keeps tensors under 4096 elements in float32, so on least squares (256 weights)
    its run is the reference's (d/floor 0): it stores no low-bit state there, and must neither
    refute nor support "no low-bit state is p-equivalent at fp32 parameters"."""
    from optimorph.experiments.findings import FAILED, HELD
    from optimorph.experiments.low_bit_states import findings

    config = LowBitConfig(states=("fp32", "bnb8", "bnb8-lib"))
    base = {"problem": "least squares h=1", "h": 1.0, "optimizer": config.optimizers[0],
            "params": "fp32", "final_loss": 1.0, "final_diff": 0.0, "diff_ci_low": 0.0,
            "diff_ci_high": 0.0, "tost_p": 0.0, "stalled_ref": 0.0, "stalled": 0.0}

    def status(lib_bytes):
        rows = [dict(base, states="fp32", d_floor=0.0, outcome="equivalent", bytes_per_param=8.0),
                dict(base, states="bnb8", d_floor=5e4, outcome="different", bytes_per_param=2.03),
                dict(base, states="bnb8-lib", d_floor=0.0, outcome="equivalent",
                     bytes_per_param=lib_bytes)]  # fmt: skip
        row = next(f for f in findings(config, rows)
                   if f["claim"].startswith("no low-bit state is p-equivalent"))  # fmt: skip
        return row["status"], row["measured"]

    held, measured = status(8.0)
    assert held == HELD and "set aside" in measured and "bnb8-lib (8 bytes" in measured
    assert status(2.03)[0] == FAILED  # low-bit and equivalent: a counterexample


@pytest.mark.parametrize("recipe, setting", [
    ("low-bit-states", {"states": ("fp32", "bnb9")}),
    ("low-bit-states", {"states": ("bnb8",)}),
    ("mxfp4-training", {"variants": ("rtn",)}),
    ("mxfp4-training", {"models": ("rnn",)}),
])  # fmt: skip
def test_bad_low_bit_settings_stop_before_the_run_directory_is_claimed(tmp_path, recipe, setting):
    with pytest.raises(ValueError, match="must"):
        recipes.run_recipe(recipe, tmp_path / "run", quick=True, progress=False, **setting)
    assert not (tmp_path / "run").exists()
