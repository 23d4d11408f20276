"""The Proposal-16 recipe end to end, on a subset of the zoo small enough for every CI run."""

import json

import numpy as np
import pytest

from optimorph.experiments import proposal16
from optimorph.experiments.recipes import run_recipe
from optimorph.report.recipe_report import write_recipe_report
from optimorph.problems import DatasetNotFound
from optimorph.problems.datasets import IDX_FILES
from optimorph.problems.idx import write_idx
from optimorph.results import store


def small_idx_dir(directory, n_train=192, n_test=64, side=8):
    """Four IDX files of learnable 8x8 images (each class a bright row), Fashion-MNIST's format."""
    rng = np.random.default_rng(0)

    def images(labels):
        x = rng.integers(0, 60, (len(labels), side, side))
        x[np.arange(len(labels)), labels % side] += 150
        return x.astype(np.uint8)

    y_train, y_test = np.arange(n_train) % 10, np.arange(n_test) % 10
    arrays = {"train_images": images(y_train), "train_labels": y_train.astype(np.uint8),
              "test_images": images(y_test), "test_labels": y_test.astype(np.uint8)}  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(directory / stem, arrays[key])
    return directory


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
    data = small_idx_dir(tmp_path / "idx")
    out = run_recipe("proposal16", tmp_path / "p16", quick=True, progress=False, seeds=2,
                     n_train=160, epochs=4.0, visits=4, models=("mlp",), workers=2,
                     path=str(data))  # fmt: skip
    doc = json.loads((out / "proposal16.json").read_text())
    assert set(doc["problems"]) == {"mlp"}
    for res in doc["problems"].values():
        assert set(res["classes"]) == {"fp16", "fp32", "fp64"}
        for classes in res["classes"].values():  # a partition of the optimizers
            assert sorted(sum(classes, [])) == sorted(proposal16.OPTIMIZERS)
        claims = {r["claim"]: r["held"] for r in res["expectations"]}
        assert claims["signSGD equivalent to no first-order method, at every precision (class D)"]
        verified = [k for k in claims if k.startswith("exact map verified")]
        assert verified and all(claims[k] for k in verified), res["verification"]
    assert proposal16.class_counts(doc)["mlp"]["fp64"] >= 1
    findings = store.read_json(out, "findings")
    assert any("[mlp] signSGD equivalent to no" in f["claim"] for f in findings)
    assert set(doc["timing"]["phases"]) >= {"train", "defects"}
    page = write_recipe_report(out)
    text = page.read_text()
    assert "Equivalence classes: mlp" in text and "data:image/png;base64" in text
    assert "proposal16 (quick scale)" in text and "Settings beside the proposal" in text
    assert "Where the time went" in text
    check_page(page)


def test_proposal16_stops_before_any_work_without_its_data(tmp_path):
    with pytest.raises(DatasetNotFound) as err:
        run_recipe("proposal16", tmp_path / "p16", quick=True, progress=False,
                   path=str(tmp_path / "nothing-here"))  # fmt: skip
    text = str(err.value)
    assert "\n" not in text and "apt-get install dataset-fashion-mnist" in text
    assert "--set path=DIR" in text
    assert not (tmp_path / "p16" / "proposal16.json").exists()


def test_proposal16_scales_name_their_departures():
    quick, medium, full = (proposal16.Recipe.quick(), proposal16.Recipe.medium(),
                           proposal16.Recipe())  # fmt: skip
    assert (full.epochs, full.seeds, full.n_train, full.scale) == (20.0, 10, 60000, "full")
    assert full.steps == 9375  # 20 epochs of 60,000 images in batches of 128
    assert medium.seeds >= 5 and medium.epochs >= 3 and set(medium.models) == {"mlp", "cnn"}
    rows = {r[0]: r for r in medium.settings_table()}
    assert rows["epochs"][1:] == [str(medium.epochs), "20-50"]
    assert rows["n_train"][2] == "the whole training set"
    assert quick.scale == "quick" and "fashion-mnist(" in quick.problem_spec("mlp")


def test_the_report_names_non_transitive_triples_and_the_settings_beside_the_proposal(tmp_path):
    from optimorph.report.recipe_report import _proposal16_tables

    recipe = proposal16.Recipe.medium()
    doc = {"settings": recipe.settings_table(), "problems": {"mlp": {
        "problem": "p", "parameters": 1234, "classes": {"fp16": [["a", "b", "c"]]},
        "non_transitive": {"fp16": [["a", "b", "c"]]}, "pairs": {}}}}  # fmt: skip
    store.write_json(tmp_path, "proposal16", doc)
    html = "".join(_proposal16_tables(tmp_path))
    assert "fp16: a ~ b and b ~ c, but not a ~ c" in html
    assert "1,234 parameters" in html and "20-50" in html  # the proposal's epochs beside ours
