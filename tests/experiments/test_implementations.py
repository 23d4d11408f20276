"""The implementations recipe at a tiny scale: verdicts, named causes, findings, resume, page."""

import pytest

from optimorph.experiments import recipes
from optimorph.experiments.findings import FAILED, HELD, OPEN
from optimorph.experiments.implementations import PAIRS, ImplementationsConfig, findings, selected
from optimorph.report.recipe_report import write_recipe_report
from optimorph.results import store

# One pair: torch's RMSprop against optax's given torch's decay (eps inside the square root
# is the one difference left); two programs to compile, the smallest run that diagnoses.
TINY = dict(problem="two-moons(n=32, widths=[4], test_n=32)", families=("RMSprop",),
            kinds=("trap",), precisions=("fp32",), seeds=2, steps=8, evals=2, replicas=2,
            diagnose_steps=4, workers=1)  # fmt: skip


def test_the_recipe_names_the_cause_of_a_trap_resumes_and_draws_it(tmp_path, check_page):
    pytest.importorskip("torch")
    out = recipes.run_recipe("implementations", tmp_path / "run", quick=True, progress=False,
                             **TINY)  # fmt: skip
    (row,) = store.read_json(out, "table_verdicts")
    assert (row["A"], row["B"]) == ("torch:RMSprop(lr=0.01)", "optax:rmsprop(0.01, decay=0.99)")
    assert (row["verdict"], row["parts at"]) == ("different", "step 1, params")
    assert row["named cause: evidence"].startswith("eps-sqrt: a gradient of 1e-6 moves A by")
    (f,) = store.read_json(out, "findings")
    assert f["status"] == FAILED and "cause [eps-sqrt]" in f["measured"]
    assert f["measured"].endswith("rule: d/floor <= 10 for every precision")
    # the full diagnosis is kept with its cell, and a rerun resumes from it without training
    (cell,) = store.read_json(out, "cells/fp32-RMSprop")
    assert len(cell["diagnosis"]["ulps_per_slot"]["params"]) == 4
    again = recipes.run_recipe("implementations", out, quick=True, progress=False, resume=True,
                               **TINY)  # fmt: skip
    assert store.read_json(again, "findings") == [f]
    page = write_recipe_report(out)
    text = page.read_text()
    assert text.index("did not hold") < text.index("Table: verdicts")
    assert 'alt="implementations_parting.png"' in text
    assert check_page(page)["images"] == 2


def _row(b, outcome, ratio, judged, precision="fp32"):
    return {"family": "RMSprop", "kind": "trap", "a": "torch:RMSprop(lr=0.01)", "b": b,
            "precision": precision, "outcome": outcome, "d_floor": ratio, "judged": judged,
            "reason": "", "diagnosis": None}  # fmt: skip


def test_findings_lead_with_the_pairs_that_are_not_what_users_assume():
    config = ImplementationsConfig(families=("RMSprop",), precisions=("fp32", "bf16"))
    match, optax, trap = (p.b for p in selected(config))
    rows = [
        _row(match, "equivalent", 0.5, 0.5), _row(match, "equivalent", 2.0, 2.0, "bf16"),
        # one run alone diverged: d/floor over the finite steps is small, the verdict is not
        _row(optax, "equivalent", 0.5, 0.5), _row(optax, "different", 0.3, "inf", "bf16"),
        _row(trap, "equivalent", 0.5, 0.5), _row(trap, "undecidable", None, None, "bf16"),
    ]  # fmt: skip
    out = findings(config, rows)
    assert [f["status"] for f in out] == [FAILED, OPEN, HELD]
    assert optax in out[0]["claim"]
    assert "bf16: different, one run alone went NaN/inf" in out[0]["measured"]
    assert "bf16: undecidable (both runs NaN/inf)" in out[1]["measured"]
    assert trap in out[1]["claim"] and match in out[2]["claim"]
    assert all(f["rule"] == "d/floor <= 10 for every precision" for f in out)


def test_every_shared_optimizer_and_trap_is_in_the_full_variant_and_quick_is_smaller():
    full, quick = selected(ImplementationsConfig()), selected(ImplementationsConfig.quick())
    assert full == list(PAIRS) and set(quick) < set(full)
    families = {p.family for p in full}
    assert families == {"Adam", "AdamW", "SGD momentum", "Nesterov", "RMSprop", "Adagrad",
                        "NAdam", "RAdam"}  # fmt: skip
    kinds = {(p.family, p.kind) for p in full}
    assert ("Adam", "code paths") in kinds and ("AdamW", "trap") in kinds
    with pytest.raises(ValueError, match="unknown families \\['Lion'\\]"):
        selected(ImplementationsConfig(families=("Lion",)))
