"""Every kind of report, opened in headless Chromium at 1280 px as a reader would: no sideways
scrolling, no word of a table cell broken over two lines or cut off, no figure shrunk below 3/4 of
its size (the checks of tests/browser.py). Skips without Chromium."""

import pytest

from optimorph import cli
from optimorph.experiments.recipes import run_recipe
from optimorph.report import write_report
from optimorph.report.figures import save_figures
from optimorph.report.recipe_report import write_recipe_report
from optimorph.results import write_run
from test_equivalence_rundirs import COMPARE, PHASE

# Long specs, two grids and more than ten series: the widest tables and legends a train run makes.
WIDE = ["train", "--problem", "two-moons(n=100)",
        "--optimizer", "adam(lr=logspace(1e-4, 1e-1, 7), b1=0.9, b2=0.999, eps=1e-8)",
        "--optimizer", "sgd(lr=[0.03, 0.1, 0.3, 1])",
        "--optimizer", "momentum(lr=power_law(0.05, tau=5e4, alpha=1), beta=0.9, form='pytorch')",
        "--seeds", "2", "--steps", "40", "--batch-size", "32", "--quiet"]  # fmt: skip
CLASSES = ["classes", "--optimizers", "sgd(lr=0.01),momentum(lr=0.01, beta=0.0),signsgd(lr=0.01)",
           "--problem", "least-squares(n=64, d=6, hetero=10)", "--precision", "fp16,fp64",
           "--seeds", "2", "--steps", "40", "--quiet"]  # fmt: skip


def _train(result, out):
    """The synthetic run of tests/results/conftest.py: escaped names, a diverged seed."""
    write_run(result, out)
    save_figures(result, out)
    return write_report(out)


def _wide_train_with_hessian(result, out):
    assert cli.main([*WIDE, "--out", str(out)]) == 0
    assert cli.main(["hessian", str(out), "--examples", "40", "--k", "2", "--lanczos-steps",
                     "8", "--samples", "4", "--seeds", "1", "--quiet"]) == 0  # fmt: skip
    return out / "report.html"


def _command(argv):
    def build(result, out):
        assert cli.main([*argv, "--out", str(out)]) == 0
        return out / "report.html"

    return build


def _recipe(result, out):
    run_recipe("optimizer-tour", out, quick=True, progress=False, steps=100, seeds=2)
    return write_recipe_report(out)


KINDS = {
    "train": _train,
    "train-grids-hessian": _wide_train_with_hessian,
    "compare": _command(COMPARE),
    "classes": _command(CLASSES),
    "phase-diagram": _command(PHASE),
    "recipe": _recipe,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_report_kind_reads_at_1280_px(kind, result, tmp_path, check_page):
    import browser

    if browser.chromium() is None:
        pytest.skip("chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    page = KINDS[kind](result, tmp_path / kind)
    shown = check_page(page)  # asserts the layout (browser.assert_readable)
    layout = shown["layout"]
    assert layout["scrollWidth"] <= layout["clientWidth"] == browser.WIDTH
    assert shown["images"] >= 1


@pytest.mark.parametrize(
    "cell_style, found",
    [("white-space: nowrap", "scrolls"), ("overflow-wrap: anywhere", "broken"), ("", None)],
)
def test_the_check_sees_a_sideways_scrollbar_and_a_word_broken_mid_word(cell_style, found,
                                                                         tmp_path):
    import browser

    # A long spec beside short words: the old style sheet (overflow-wrap: anywhere) gave the
    # spec the room and broke the short words; nowrap runs off the page.
    cells = [f"<td style='{cell_style}'>{'signsgd(lr=0.01, b1=0.9) ' * 12}</td>"]
    cells += [f"<td style='{cell_style}'>equivalent</td>"] * 8
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body style='max-width: 1200px'><table><tr>"
                    + "".join(cells) + "</tr></table></body></html>")  # fmt: skip
    status, _ = browser.probe_page(page, tmp_path)
    layout = status["layout"]
    if found is None:
        browser.assert_readable(layout, page)
        return
    with pytest.raises(AssertionError, match=found):
        browser.assert_readable(layout, page)


def test_proposal16_tables_give_the_class_count_its_seed_split_range(tmp_path):
    import json
    import re

    from optimorph.report.recipe_report import _proposal16_tables

    split = {"a": "sgd", "b": "adam", "outcome": "equivalent", "distance_ratio": 9.32,
             "ratio_per_seed": [19.9, 6.2, 10.3, 9.3, 7.8], "seeds_against": 2,
             "alternative": False}  # fmt: skip
    firm = dict(split, b="sign", outcome="different", distance_ratio=40.0, seeds_against=0,
                alternative=None, ratio_per_seed=[41.0, 39.0, 40.0, 38.0, 42.0])
    doc = {"problems": {"mlp": {
        "problem": "p", "classes": {"fp16": [["sgd", "adam"], ["sign"]], "fp32": [["sgd"]]},
        "class_range": {"fp16": [2, 3], "fp32": [1, 1]}, "pairs": {"fp16": [split, firm]},
    }}}  # fmt: skip
    (tmp_path / "proposal16.json").write_text(json.dumps(doc))
    page = "".join(_proposal16_tables(tmp_path))
    assert '<td>fp16</td><td>2 <span class="w">(2-3)</span></td>' in page and "<td>fp32</td><td>1</td>" in page
    text = re.sub(r"<[^>]+>", "", page)
    assert "sgd | adam equivalent at d/floor 9.32, 2 of 5 seeds on the other side of C" in text
    assert "sgd | sign different" not in text.split("Seed-split")[1].split("mlp: the closest")[0]
    assert "<td>2 of 5</td>" in page and "<td>0 of 5</td>" in page
