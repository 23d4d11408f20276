"""The Proposal-16 pipeline end to end, on a subset of the zoo small enough for every CI run."""

import dataclasses
import json

from optimorph.experiments import proposal16


def test_proposal16_pipeline_writes_classes_expectations_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(
        proposal16, "OPTIMIZERS", ["sgd(lr=0.1)", "momentum(lr=0.01, beta=0.9)", "signsgd(lr=1e-3)"]
    )
    monkeypatch.setattr(
        proposal16,
        "VERIFY_PAIRS",
        [
            ("momentum(lr=0.01, beta=0.9)", "momentum(lr=0.01, beta=0.9, form='ema')"),
        ],
    )
    recipe = dataclasses.replace(proposal16.Recipe.quick(), seeds=2, steps=20, visits=4)
    doc = proposal16.run(tmp_path, recipe, progress=False)
    assert set(doc["problems"]) == {"mlp", "cnn"}
    for res in doc["problems"].values():
        assert set(res["classes"]) == {"fp16", "fp32", "fp64"}
        for classes in res["classes"].values():  # a partition of the optimizers
            assert sorted(sum(classes, [])) == sorted(proposal16.OPTIMIZERS)
        claims = {r["claim"]: r["held"] for r in res["expectations"]}
        assert claims["signSGD equivalent to no first-order method, at every precision"]
        verified = [k for k in claims if k.startswith("exact map verified")]
        assert verified and all(claims[k] for k in verified), res["verification"]
    stored = json.loads((tmp_path / "proposal16.json").read_text())
    assert proposal16.class_counts(stored) == proposal16.class_counts(doc)
    page = (tmp_path / "report.html").read_text()
    assert "did not hold" in page or "held" in page
    assert "data:image/png;base64" in page
