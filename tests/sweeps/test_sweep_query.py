"""SQL over a sweep store (``optimorph query``) and the sweep report (``optimorph report``)."""

import csv
import io
import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from optimorph import cli
from optimorph.results.sweep_results import cells_table, points, query


def test_the_cells_table_has_every_cell_its_values_and_its_finals(reference):
    store, _ = reference
    rows = cells_table(store).to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    assert {(r["precision"], r["lr"], r["seed"]) for r in rows} == {
        (p, lr, s) for p in ("fp32", "fp64") for lr in (0.05, 0.1) for s in (0, 1)
    }
    assert {r["family"] for r in rows} == {"sgd"} and {r["diverged_at"] for r in rows} == {-1}
    # A final number read from summary.json is the last evaluation in metrics.parquet: two
    # files written apart, read by two paths.
    for r in rows:
        table = pq.read_table(store / "cells" / r["cell"] / "metrics.parquet").to_pylist()
        test = [x for x in table if (x["split"], x["metric"]) == ("test", "loss")]
        assert r["test_loss"] == max(test, key=lambda x: x["step"])["value"]


def test_sql_over_cells_and_metrics(reference):
    store, _ = reference
    per_point = query(store, "select precision, lr, count(*) as n from cells "
                             "group by all order by all").to_pylist()  # fmt: skip
    assert per_point == [{"precision": p, "lr": lr, "n": 2}
                         for p in ("fp32", "fp64") for lr in (0.05, 0.1)]  # fmt: skip
    sql = ("select c.cell, c.lr, max(m.step) as last from cells c join metrics m using (cell) "
           "where m.split = 'test' group by all")
    joined = query(store, sql).to_pylist()
    assert len(joined) == 8 and {r["last"] for r in joined} == {40}
    with pytest.raises(ValueError, match=r"query failed: .*nope[\s\S]*cells: cell, batch"):
        query(store, "select nope from cells")


def test_a_store_with_unfinished_cells(reference, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(reference[0], store)
    gone = sorted((store / "cells").iterdir())[0].name
    shutil.rmtree(store / "cells" / gone)
    rows = {r["cell"]: r for r in cells_table(store).to_pylist()}
    assert rows[gone]["status"] == "pending" and rows[gone]["test_loss"] is None
    assert query(store, "select count(distinct cell) as n from metrics").to_pylist() == [{"n": 7}]
    assert sorted(len(p.seeds) for p in points(store)) == [1, 2, 2, 2]
    for cell in (store / "cells").iterdir():
        shutil.rmtree(cell)
    assert query(store, "select count(*) as n from metrics").to_pylist() == [{"n": 0}]
    assert points(store) == []
    assert cli.main(["report", str(store)]) == 0  # a store where nothing has finished yet
    page = (store / "report.html").read_text()
    assert "0 of 8 cells done, 8 not run yet" in page and "No cell has finished yet" in page


def test_the_command_prints_a_table_csv_or_json(reference, capsys):
    store, _ = reference
    sql = "select precision, lr, avg(test_loss) as test_loss from cells group by all order by all"
    assert cli.main(["query", str(store), sql, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["precision"], float(r["lr"])) for r in rows] == [
        (p, lr) for p in ("fp32", "fp64") for lr in (0.05, 0.1)
    ]
    assert cli.main(["query", str(store), sql, "--format", "json"]) == 0
    assert [json.loads(line)["lr"] for line in capsys.readouterr().out.splitlines()] == [
        0.05, 0.1, 0.05, 0.1
    ]  # fmt: skip
    assert cli.main(["query", str(store), sql, "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["precision", "lr", "test_loss"] and len(lines) == 4
    assert lines[-1] == "(2 more rows; --limit N shows more, --format csv all)"


def test_query_on_a_directory_that_is_no_sweep_says_so(tmp_path, capsys):
    assert cli.main(["query", str(tmp_path), "select 1"]) == 2
    err = capsys.readouterr().err
    assert "is not a sweep store" in err and "Traceback" not in err


def test_the_report_names_each_best_point_by_the_stated_rule(reference, tmp_path, check_page):
    store = tmp_path / "store"
    shutil.copytree(reference[0], store)
    assert cli.main(["report", str(store)]) == 0
    page = (store / "report.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    # least squares holds no validation split: the rule is the training-set loss, and says so.
    assert "ranked by training-set loss at the last evaluation, lowest mean over 2 seeds" in text
    for precision in ("fp32", "fp64"):
        means = query(store, f"select lr, avg(train_loss) as m from cells where precision = "
                             f"'{precision}' group by lr").to_pylist()  # fmt: skip
        best = min(means, key=lambda r: r["m"])["lr"]
        row = page.split(f"<td class=\"nowrap\">{precision}</td>")[1].split("</tr>")[0]
        assert f"sgd(lr={best:g})" in row.replace("<wbr>", ""), row
    assert (store / "sensitivity-0.png").is_file() and "data:image/png" in page
    check_page(store / "report.html")
    assert np.isfinite([p.entry["final"]["train/loss"]["mean"] for p in points(store)]).all()


def test_the_statistics_plan_pairs_cells_by_seed(reference, tmp_path):
    """Each point at fp64 against the same point at fp32, paired by seed: the numbers are the
    paired t-test and TOST of the values the cells table holds, computed here apart; the
    report states the plan and tabulates the comparisons."""
    from optimorph import stats
    from optimorph.results.sweep_results import comparisons

    store, _ = reference
    plan = {"against": "precision", "reference": "fp32", "metric": "test_loss", "margin": 0.05,
            "alpha": 0.05}  # fmt: skip
    found = comparisons(store, plan)
    assert [(c["point"], c["value"], c["n"]) for c in found] == [
        ("sgd(lr=0.05)", "fp64", 2), ("sgd(lr=0.1)", "fp64", 2)]  # fmt: skip
    rows = cells_table(store).to_pylist()
    for c in found:
        def values(precision, c=c):
            return [r["test_loss"] for r in sorted(rows, key=lambda r: r["seed"])
                    if r["optimizer"] == c["point"] and r["precision"] == precision]  # fmt: skip
        t = stats.paired_t_test(values("fp64"), values("fp32"))
        e = stats.tost(values("fp64"), values("fp32"), 0.05, relative=True)
        assert (c["mean_diff"], c["p_value"], c["tost_p"]) == (t.mean_diff, t.p_value, e.p_value)
        assert c["verdict"] == ("equivalent" if e.equivalent else
                                "different" if t.p_value < 0.05 else "inconclusive")  # fmt: skip
    assert comparisons(store) == []  # the tiny sweep's file has no plan
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["statistics"] = plan
    (copy / "config.json").write_text(json.dumps(config))
    assert cli.main(["report", str(copy)]) == 0
    text = re.sub(r"<[^>]+>", "", (copy / "report.html").read_text())
    assert "Statistics (the sweep file's plan, fixed before any cell ran)" in text
    assert "Each precision against fp32" in text and "2 comparisons:" in text


def test_a_plan_on_a_metric_the_cells_lack_is_one_clear_message(reference, tmp_path):
    from optimorph.results.sweep_results import comparisons

    store, _ = reference
    plan = {"against": "precision", "reference": "fp32", "metric": "validation_loss",
            "margin": 0.05, "alpha": 0.05}  # fmt: skip
    with pytest.raises(ValueError, match="metric 'validation_loss' is not a final number of the "
                       "finished cells; they have .*test_loss"):  # fmt: skip
        comparisons(store, plan)
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["statistics"] = plan
    (copy / "config.json").write_text(json.dumps(config))
    assert cli.main(["report", str(copy)]) == 0  # the rest of the report is still drawn
    text = re.sub(r"<[^>]+>", "", (copy / "report.html").read_text())
    assert "is not a final number of the finished cells" in text and "Best point" in text


def test_only_a_momentum_like_hyperparameter_is_drawn_as_one_minus_beta():
    from optimorph.report.sweep_report import _is_beta

    assert _is_beta("b2", [0.99, 0.999]) and _is_beta("momentum", [0.5, 0.9])
    assert not _is_beta("lr", [0.5, 0.9]) and not _is_beta("b1", [0.0, 0.9])
