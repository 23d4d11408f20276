"""The Proposal-16 recipe end to end, on a subset of the zoo small enough for every CI run."""

import json

import pytest

from optimorph.experiments import proposal16
from optimorph.experiments.recipes import run_recipe
from optimorph.report.recipe_report import write_recipe_report
from optimorph.results import store


@pytest.mark.heavy
def test_proposal16_pipeline_writes_classes_findings_and_report(tmp_path, monkeypatch, check_page):
    monkeypatch.setattr(
        proposal16, "OPTIMIZERS", ["sgd(lr=0.1)", "momentum(lr=0.01, beta=0.9)", "signsgd(lr=1e-3)"]
    )
    monkeypatch.setattr(
        proposal16,
        "VERIFY_PAIRS",
        [("momentum(lr=0.01, beta=0.9)", "momentum(lr=0.01, beta=0.9, form='ema')")],
    )
    # One of the two models keeps this under a minute and a half on 2 cores; the CNN runs the
    # same code path (covered by the quick recipe, `optimorph run proposal16 --quick`).
    out = run_recipe("proposal16", tmp_path / "p16", quick=True, progress=False, seeds=2,
                     steps=20, visits=4, models=("mlp",), workers=2)  # fmt: skip
    doc = json.loads((out / "proposal16.json").read_text())
    assert set(doc["problems"]) == {"mlp"}
    for res in doc["problems"].values():
        assert set(res["classes"]) == {"fp16", "fp32", "fp64"}
        for classes in res["classes"].values():  # a partition of the optimizers
            assert sorted(sum(classes, [])) == sorted(proposal16.OPTIMIZERS)
        claims = {r["claim"]: r["held"] for r in res["expectations"]}
        assert claims["signSGD equivalent to no first-order method, at every precision"]
        verified = [k for k in claims if k.startswith("exact map verified")]
        assert verified and all(claims[k] for k in verified), res["verification"]
    assert proposal16.class_counts(doc)["mlp"]["fp64"] >= 1
    findings = store.read_json(out, "findings")
    assert any("[mlp] signSGD equivalent to no" in f["claim"] for f in findings)
    page = write_recipe_report(out)
    text = page.read_text()
    assert "Equivalence classes: mlp" in text and "data:image/png;base64" in text
    check_page(page)
