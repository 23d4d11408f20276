"""A sweep's store read back as tables: one row per cell, every metric, SQL over both.

Two tables, as DuckDB views for :func:`query` and as ``pyarrow`` tables:

``cells``
    one row per cell of the sweep (finished or not): ``cell``, ``batch``, ``problem``,
    ``precision``, ``optimizer`` (the point's full spec), ``label`` (the point as the sweep
    file gives it), ``family`` (the optimizer's name), ``seed``,
    ``status`` (``done``, ``failed`` or ``pending``), ``steps``, ``batch_size``, one column per
    hyperparameter of any cell's full spec (numbers as DOUBLE; a schedule or other value as its
    spec text), and for finished cells ``diverged_at`` (-1: it did not) and one column per final
    number of its ``summary.json`` (``train_step_loss``, ``validation_loss``, ``test_accuracy``,
    ...: the metric key with ``/`` as ``_``; NULL when the run diverged).
``metrics``
    every finished cell's ``metrics.parquet`` (optimizer, seed, step, split, metric, value) with
    its ``cell`` id: the curves.

>>> query("runs/sweep", "select family, precision, min(validation_loss) "  # doctest: +SKIP
...       "from cells where status = 'done' group by all order by all")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from optimorph import spec as spec_lib
from optimorph.results import sweep_store
from optimorph.results.rundir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_config
from optimorph.results.store import RunDirError

__all__ = ["read_store", "Store", "cells_table", "query", "points", "Point", "comparisons",
           "column_of", "hyperparameters", "BASE_COLUMNS"]

# The metrics view when no cell has finished: the columns, no rows (queries still run).
_EMPTY_METRICS = (
    "create view metrics as select * from (values (NULL::VARCHAR, NULL::INTEGER, NULL::BIGINT, "
    "NULL::BIGINT, NULL::VARCHAR, NULL::VARCHAR, NULL::DOUBLE, NULL::VARCHAR)) "
    "t(optimizer, optimizer_index, seed, step, split, metric, value, cell) where false"
)

BASE_COLUMNS = ("cell", "batch", "problem", "precision", "optimizer", "label", "family", "seed",
                "status", "steps", "batch_size")  # fmt: skip


def column_of(metric_key: str) -> str:
    """The ``cells`` column of a summary's final-metric key: ``validation/loss`` ->
    ``validation_loss``."""
    return metric_key.replace("/", "_")


def hyperparameters(canonical: str) -> dict[str, Any]:
    """The hyperparameters of a full optimizer spec, numbers as floats and anything else (a
    schedule, a string, a list) as its spec text."""
    call = spec_lib.parse(canonical)
    out: dict[str, Any] = {}
    for name, value in call.kwargs.items():
        if isinstance(value, bool):
            out[name] = str(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
        else:
            out[name] = str(value) if isinstance(value, spec_lib.Call) else repr(value)
    return out


@dataclasses.dataclass(frozen=True)
class Store:
    """A sweep store read once: every cell as a dict (hyperparameters under ``("hp", name)``,
    final numbers under ``("final", metric key)``), the hyperparameters' value types, the final
    metric keys, and the statistics plan the store recorded. The table, the points and the
    comparisons all come from one read (a store holds up to 100,000 cells)."""

    path: Path
    rows: list[dict]
    hp_types: dict[str, set]
    final_keys: list[str]
    plan: Mapping[str, Any] | None


def read_store(out: str | os.PathLike) -> Store:
    """Read the sweep store ``out`` (its ``config.json`` and each finished cell's summary).

    Raises:
      RunDirError: ``out`` is not a sweep store.
    """
    out = Path(out)
    if not (out / CONFIG_FILE).is_file():
        raise RunDirError(f"{out} is not a sweep store (it has no {CONFIG_FILE}): give the --out "
                          "of optimorph sweep")  # fmt: skip
    doc = read_config(out, kind=sweep_store.KIND)["config"]
    done = sweep_store.done_cells(out)
    failed = sweep_store.failures(out)
    rows, hp_types, final_keys = [], {}, {}
    parsed: dict[str, tuple[str, dict]] = {}  # a point's spec is parsed once, not per seed
    for c in doc["cells"]:
        status = "done" if c["id"] in done else "failed" if c["id"] in failed else "pending"
        settings = c.get("settings", {})
        canonical = c["optimizer"]  # the store records each point with every value spelled out
        if canonical not in parsed:
            parsed[canonical] = (spec_lib.parse(canonical).name, hyperparameters(canonical))
        family, hparams = parsed[canonical]
        row: dict[Any, Any] = {
            "cell": c["id"], "batch": c["batch"], "problem": c["problem"],
            "precision": c["precision"], "optimizer": canonical,
            "label": c.get("label", canonical), "family": family, "seed": int(c["seed"]),
            "status": status, "steps": settings.get("steps"),
            "batch_size": settings.get("batch_size"),
        }  # fmt: skip
        for name, value in hparams.items():
            hp_types.setdefault(name, set()).add(type(value))
            row[("hp", name)] = value
        if status == "done":
            summary = json.loads((out / sweep_store.CELLS / c["id"] / SUMMARY_FILE).read_text())
            (entry,) = summary["optimizers"]
            row["diverged_at"] = entry["diverged"][0]["step"] if entry["diverged"] else -1
            for key, stats in entry["final"].items():
                final_keys[key] = None
                row[("final", key)] = stats["mean"]
        rows.append(row)
    return Store(out, rows, hp_types, list(final_keys), doc.get("statistics"))


def _store(out: str | os.PathLike | Store) -> Store:
    return out if isinstance(out, Store) else read_store(out)


def cells_table(out: str | os.PathLike | Store) -> pa.Table:
    """The ``cells`` table of a sweep store (a path or a :class:`Store`; see the module
    docstring).

    Raises:
      RunDirError: ``out`` is not a sweep store.
    """
    store = _store(out)
    rows = store.rows
    columns: dict[str, list] = {name: [r[name] for r in rows] for name in BASE_COLUMNS}
    for name, types in store.hp_types.items():
        column = name if name not in columns else f"hp_{name}"
        values = [r.get(("hp", name)) for r in rows]
        if types != {float}:  # a number in one cell, a schedule in another: all as text
            values = [None if v is None else v if isinstance(v, str) else repr(v) for v in values]
        columns[column] = values
    columns["diverged_at"] = [r.get("diverged_at") for r in rows]
    for key in store.final_keys:
        columns[column_of(key)] = [_finite(r.get(("final", key))) for r in rows]
    return pa.table(columns)


def query(out: str | os.PathLike, sql: str) -> pa.Table:
    """Run one SQL statement over the sweep store ``out``'s ``cells`` and ``metrics`` (DuckDB).

    Raises:
      RunDirError: ``out`` is not a sweep store.
      ValueError: the SQL failed (DuckDB's message, with the tables' columns).
    """
    out = Path(out)
    cells = cells_table(out)
    done = sorted(sweep_store.done_cells(out))
    with duckdb.connect() as con:
        con.register("cells", cells)
        if done:
            files = [str(out / sweep_store.CELLS / c / METRICS_FILE) for c in done]
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.sql(
                f"create view metrics as select * exclude (filename), "
                f"regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) as cell "
                f"from read_parquet([{listed}], filename = true)"
            )
        else:
            con.sql(_EMPTY_METRICS)
        try:
            return con.sql(sql).to_arrow_table()
        except duckdb.Error as err:
            raise ValueError(
                f"query failed: {str(err).splitlines()[0]}\n  cells: "
                f"{', '.join(cells.column_names)}\n  metrics: {_columns(con, 'metrics')}"
            ) from None


def _columns(con: Any, view: str) -> str:
    return ", ".join(r[0] for r in con.sql(f"describe {view}").fetchall())


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None



@dataclasses.dataclass(frozen=True)
class Point:
    """One optimizer point of a sweep at one problem and precision, over its seeds.

    Attributes:
      problem, precision, family, optimizer: what its cells share (``optimizer``: full spec).
      label: the point as the sweep file gives it.
      hparams: its hyperparameters (:func:`hyperparameters`).
      seeds: the seeds of its finished cells.
      entry: the point as :func:`optimorph.results.summary.rank` ranks it: ``final`` (per
        metric key, statistics over the seeds that did not diverge) and ``n_diverged``.
    """

    problem: str
    precision: str
    family: str
    optimizer: str
    label: str
    hparams: Mapping[str, Any]
    seeds: tuple[int, ...]
    entry: Mapping[str, Any]


def points(out: str | os.PathLike | Store) -> list[Point]:
    """The finished cells of a sweep store (a path or a :class:`Store`) pooled over seeds into
    points, in the sweep's order of cells."""
    from optimorph.results.summary import seed_stats

    store = _store(out)
    rows, final_keys = store.rows, store.final_keys
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault((row["problem"], row["precision"], row["optimizer"]), []).append(row)
    found = []
    for (prob, precision, optimizer), members in groups.items():
        ok = [r for r in members if r["diverged_at"] == -1]
        final = {key: seed_stats(np.array([r[("final", key)] for r in ok
                                           if r.get(("final", key)) is not None], dtype=float))
                 for key in final_keys}  # fmt: skip
        found.append(Point(prob, precision, members[0]["family"], optimizer, members[0]["label"],
                           hyperparameters(optimizer), tuple(r["seed"] for r in members),
                           {"final": final, "n_diverged": len(members) - len(ok)}))  # fmt: skip
    return found


def comparisons(out: str | os.PathLike | Store, plan: Mapping[str, Any] | None = None
                ) -> list[dict]:  # fmt: skip
    """The paired comparisons of a sweep's statistics plan (the store's, unless ``plan`` is
    given): each cell group that differs from the reference only in the plan's axis
    (``precision`` or ``optimizer``), paired with the reference's cells by seed, judged on the
    plan's metric by a paired t-test and TOST at the plan's margin. A diverged seed enters as
    NaN, and its tests say so (no p-value) rather than leaving it out.

    Returns:
      One dict per comparison: ``problem``, ``point`` (what the pair shares: the optimizer, or
      the precision), ``value`` (the compared value) and ``reference``, ``metric``, ``n`` (seeds
      in both), ``mean_diff`` (value - reference) with ``ci_low``/``ci_high`` (a 1 - alpha
      interval), ``p_value``,
      ``tost_p``, ``margin`` (absolute), ``verdict`` (``equivalent``, ``different``,
      ``inconclusive``) and ``note``; [] without a plan or a finished cell.

    Raises:
      ValueError: the plan's metric is not a final number of the finished cells.
    """
    from optimorph import stats
    from optimorph.results.summary import RANK_METRICS

    store = _store(out)
    plan = store.plan if plan is None else plan
    if not plan:
        return []
    rows, final_keys = store.rows, store.final_keys
    if not final_keys:  # nothing has finished
        return []
    metric = plan.get("metric")
    key = next((k for k in final_keys if column_of(k) == metric), None) if metric else next(
        (k for k in RANK_METRICS if k in final_keys), None)  # fmt: skip
    if key is None:
        raise ValueError(
            f"statistics: metric {metric!r} is not a final number of the finished cells; they "
            f"have {', '.join(column_of(k) for k in final_keys)}")  # fmt: skip
    axis, other = ("precision", "optimizer") if plan["against"] == "precision" else (
        "optimizer", "precision")  # fmt: skip
    values: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["status"] == "done":
            value = r.get(("final", key)) if r["diverged_at"] == -1 else None
            values.setdefault((r["problem"], r[other], r[axis]), {})[r["seed"]] = (
                math.nan if value is None else float(value))  # fmt: skip
    found = []
    for (problem, point, value), by_seed in values.items():
        ref = values.get((problem, point, plan["reference"]))
        if value == plan["reference"] or ref is None:
            continue
        seeds = sorted(set(by_seed) & set(ref))
        a = np.array([by_seed[s] for s in seeds])
        b = np.array([ref[s] for s in seeds])
        with np.errstate(all="ignore"):
            t = stats.paired_t_test(a, b, alpha=plan["alpha"])
            e = stats.tost(a, b, plan["margin"], relative=True, alpha=plan["alpha"])
        note = t.note or e.note
        if e.equivalent:
            verdict = "equivalent"
            if t.p_value < plan["alpha"]:  # both can hold: a real difference inside the margin
                note = ("inside the margin, though the t-test finds a difference "
                        f"(p={t.p_value:.2g})")
        elif np.isfinite(t.p_value) and t.p_value < plan["alpha"]:
            verdict = "different"
        else:
            verdict = "inconclusive"
        found.append({
            "problem": problem, "point": point, "value": value, "reference": plan["reference"],
            "metric": column_of(key), "n": len(seeds), "mean_diff": _finite(t.mean_diff),
            "ci_low": _finite(t.ci_low), "ci_high": _finite(t.ci_high),
            "p_value": _finite(t.p_value), "tost_p": _finite(e.p_value),
            "margin": _finite(e.margin), "verdict": verdict, "note": note,
        })  # fmt: skip
    return found
