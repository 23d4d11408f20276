"""A sweep's report: each optimizer's best point per problem and precision, and how the ranking
metric moves along each swept hyperparameter through that point.

Points (an optimizer with every hyperparameter set, its seeds pooled) are ranked by the one rule
of :func:`optimorph.results.summary.rank`: the held-out validation loss when the problem holds a
validation split, the training-set loss otherwise; the rule's sentence is printed above the
table. A sensitivity panel varies one hyperparameter and holds the others at the best point's
values, one line per precision, mean over seeds with their standard deviation as error bars.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from optimorph.report.figures import save_figure
from optimorph.report.html import (
    REPORT_FILE,
    cell_text,
    figure_html,
    format_number,
    mapping_table,
    rows_table,
    write_page,
)
from optimorph.report.style import MAX_WIDTH, legend_above, series_style, tidy_log_ticks
from optimorph.results import sweep_store
from optimorph.results.rundir import CONFIG_FILE, read_config
from optimorph.results.summary import RANK_METRICS, rank
from optimorph.results.sweep_results import (
    Point,
    Store,
    column_of,
    comparisons,
    points,
    read_store,
)

__all__ = ["write_sweep_report", "SENSITIVITY_FILE"]

SENSITIVITY_FILE = "sensitivity-{i}.png"


def write_sweep_report(out: str | os.PathLike) -> Path:
    """Draw the sensitivity figures of the sweep store ``out`` and write its ``report.html``."""
    out = Path(out)
    config = read_config(out, kind=sweep_store.KIND)
    doc = config["config"]
    store = read_store(out)  # read once: the counts, the points and the statistics
    status = [r["status"] for r in store.rows]
    counts = {s: status.count(s) for s in ("done", "failed", "pending")}
    found = points(store)
    ranked = next((k for k in RANK_METRICS if k in store.final_keys), RANK_METRICS[-1])
    seeds = sorted({int(c["seed"]) for c in doc["cells"]})
    body = [
        f"<h1>optimorph sweep: {cell_text(doc.get('name', out.name))}</h1>",
        f"<p class='lead'>{counts['done']} of {len(status)} cells done"
        + (f", {counts['failed']} failed" if counts["failed"] else "")
        + (f", {counts['pending']} not run yet" if counts["pending"] else "")
        + f"; {len(found)} optimizer points finished, each over up to {len(seeds)} seeds.</p>",
    ]
    if counts["failed"]:
        body.append("<p>Failed cells keep their error in <code>failed/</code>; rerunning the "
                    "same <code>optimorph sweep</code> command retries them.</p>")  # fmt: skip
    if not found:
        body.append("<p>No cell has finished yet: nothing to rank.</p>")
    for i, problem in enumerate(dict.fromkeys(p.problem for p in found)):
        mine = [p for p in found if p.problem == problem]
        body += _problem_section(out, i, problem, mine, len(seeds))
    body += _statistics_section(store)
    body += [
        "<h2>Querying the cells</h2>",
        "<p>Every number here comes from the store's tables: <code>optimorph query "
        f"{cell_text(str(out))} \"select family, precision, min({column_of(ranked)}) from "
        "cells group by all\"</code> (tables <code>cells</code> and <code>metrics</code>; "
        "docs/sweeps.md lists their columns).</p>",
        "<h2>Sweep file</h2>",
        f"<pre>{cell_text((out / sweep_store.SWEEP_FILE).read_text())}</pre>"
        if (out / sweep_store.SWEEP_FILE).is_file() else "<p>(sweep.toml is missing)</p>",
        "<h2>Environment</h2>",
        mapping_table(config.get("environment", {})),
    ]  # fmt: skip
    return write_page(out / REPORT_FILE, f"optimorph sweep: {doc.get('name', out.name)}", body)


def _problem_section(out: Path, i: int, problem: str, found: list[Point], n_seeds: int
                     ) -> list[str]:  # fmt: skip
    """The best-points table and the sensitivity figure of one problem."""
    info = _problem_info(out, problem)
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in found:
        groups.setdefault((p.family, p.precision), []).append(p)
    rows, best, rule, metric = [], {}, "", ""
    families = list(dict.fromkeys(p.family for p in found))
    by_family = sorted(groups.items(), key=lambda kv: families.index(kv[0][0]))
    for (family, precision), members in by_family:
        ranked = rank([dict(p.entry) for p in members], n_seeds=n_seeds, problem_info=info)
        rule, metric = ranked["rule"], ranked["metric"]
        diverged = sum(1 for p in members if p.entry["n_diverged"])
        if not ranked["order"]:
            rows.append([family, precision, "every point diverged or has no value", "", "",
                         len(members), diverged])  # fmt: skip
            continue
        top = members[ranked["order"][0]]
        best[(family, precision)] = top
        stats = top.entry["final"][metric]
        test = top.entry["final"].get("test/accuracy", {}).get("mean")
        rows.append([family, precision, top.label, _mean_sd(stats),
                     "" if test is None else test, len(members), diverged])  # fmt: skip
    columns = ["optimizer", "precision", "best point", f"{metric} (mean ± sd, n)",
               "test accuracy (mean)", "points", "points with a diverged seed"]  # fmt: skip
    section = [
        f"<h2>{cell_text(problem)}</h2>",
        f"<p>Best point of each optimizer at each precision, ranked {cell_text(rule)}.</p>",
        rows_table(columns, rows, nowrap=(1,)),
    ]
    fig = _sensitivity_figure(found, best, metric)
    if fig is not None:
        path = save_figure(fig, out / SENSITIVITY_FILE.format(i=i))
        caption = (f"{metric} (mean over seeds, error bars one standard deviation) along each "
                   "swept hyperparameter, the others held at the best point's values; one "
                   "line per precision. A beta-like hyperparameter (b1, b2, momentum) near "
                   "1 is drawn as 1 - beta on a log axis.")  # fmt: skip
        section.append(figure_html(path, caption))
    return section


def _problem_info(out: Path, problem: str) -> dict:
    """The problem's ``info`` (its validation split) from a finished cell of it."""
    for cell in sorted((out / sweep_store.CELLS).iterdir()):
        doc = json.loads((cell / CONFIG_FILE).read_text())
        if doc.get("problem", {}).get("name") == problem or doc["config"].get("problem") == problem:
            return doc.get("problem", {}).get("info", {})
    return {}


def _mean_sd(stats: dict) -> str:
    if stats.get("mean") is None:
        return ""
    sd = "" if stats.get("std") is None else f" ± {format_number(stats['std'], 2)}"
    return f"{format_number(stats['mean'])}{sd} (n={stats['n']})"


def _axes_of(members: Sequence[Point]) -> list[str]:
    """The numeric hyperparameters that take more than one value among ``members``."""
    names = dict.fromkeys(k for p in members for k in p.hparams)
    return [k for k in names
            if all(isinstance(p.hparams.get(k), float) for p in members)
            and len({p.hparams[k] for p in members}) > 1]  # fmt: skip


def _sensitivity_figure(found: list[Point], best: dict, metric: str) -> Figure | None:
    families = list(dict.fromkeys(p.family for p in found))
    panels = [(f, a) for f in families for a in _axes_of([p for p in found if p.family == f])]
    if not panels or not metric:
        return None
    precisions = list(dict.fromkeys(p.precision for p in found))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    width = min(MAX_WIDTH, 3.3 * ncols)
    fig = Figure(figsize=(width, 2.7 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    handles: dict[str, object] = {}
    for ax, (family, axis) in zip(axes, panels, strict=False):
        beta = _is_beta(axis, [p.hparams[axis] for p in found if p.family == family])
        for k, precision in enumerate(precisions):
            top = best.get((family, precision))
            if top is None:
                continue
            line = sorted(
                (p for p in found if p.family == family and p.precision == precision
                 and all(p.hparams.get(h) == v for h, v in top.hparams.items() if h != axis)),
                key=lambda p: p.hparams[axis],
            )  # fmt: skip
            x = np.array([p.hparams[axis] for p in line])
            stats = [p.entry["final"].get(metric, {}) for p in line]
            y = np.array([np.nan if s.get("mean") is None else s["mean"] for s in stats])
            sd = np.array([0.0 if s.get("std") is None else s["std"] for s in stats])
            h = ax.errorbar(1 - x if beta else x, y, yerr=sd, marker="o", ms=3, capsize=2,
                            **series_style(k))  # fmt: skip
            handles.setdefault(precision, h)
        values = np.array([p.hparams[axis] for p in found if p.family == family])
        shown = 1 - values if beta else values
        if np.all(shown > 0) and shown.max() / shown.min() >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(f"1 - {axis}" if beta else axis)
        ax.set_ylabel(metric)
        ax.set_title(f"{family}: {axis}", fontsize="medium")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    legend_above(fig, list(handles.values()), list(handles), width=width)
    fig.canvas.draw()  # the layout, so that the log ticks know their room
    for ax in axes[: len(panels)]:
        tidy_log_ticks(ax)
    return fig


def _is_beta(name: str, values: Sequence[float]) -> bool:
    """A momentum-like hyperparameter (b1, b2, beta, beta2, momentum, decay, rho), every value in
    [0.5, 1): read as 1 - beta. By name too: a learning rate of 0.5 to 0.9 is not a beta."""
    momentum_like = re.fullmatch(r"b\d*|beta\d*|momentum|decay|rho", name) is not None
    return momentum_like and all(0.5 <= v < 1 for v in values)


def _statistics_section(store: Store) -> list[str]:
    """The sweep file's statistics plan, stated as it was fixed before any cell ran, and its
    paired comparisons."""
    plan = store.plan
    if not plan:
        return []
    try:
        found = comparisons(store)
    except ValueError as err:  # a metric the cells do not have: say so, draw the rest
        return ["<h2>Statistics (the sweep file's plan)</h2>", f"<p>{cell_text(str(err))}</p>"]
    axis = plan["against"]
    metric = plan.get("metric") or "the ranking rule's metric"
    head = [
        "<h2>Statistics (the sweep file's plan, fixed before any cell ran)</h2>",
        f"<p>Each {axis} against {cell_text(plan['reference'])}: cells that differ only in the "
        f"{axis}, paired by seed, on {cell_text(found[0]['metric'] if found else metric)} "
        f"(value minus reference): a paired t-test and TOST with a margin of "
        f"{plan['margin']:g} of the larger mean, each at level {plan['alpha']:g}. "
        "<i>equivalent</i>: TOST shows the difference inside the margin; <i>different</i>: "
        "the t-test rejects equality; otherwise <i>inconclusive</i>. A diverged seed has no "
        "value, so its comparison has no p-value.</p>",
    ]
    if not found:
        return head + ["<p>No comparison yet: the reference's cells or the compared ones have "
                       "not finished.</p>"]  # fmt: skip
    shared = "optimizer" if axis == "precision" else "precision"
    columns = ["problem", shared, axis, "n", "mean difference [CI]", "t-test p", "TOST p",
               "verdict"]  # fmt: skip
    rows = []
    for c in found:
        interval = ("" if c["mean_diff"] is None else
                    f"{format_number(c['mean_diff'], 3)} [{format_number(c['ci_low'], 3)}, "
                    f"{format_number(c['ci_high'], 3)}]")  # fmt: skip
        verdict = c["verdict"] + (f" ({c['note']})" if c["note"] else "")
        rows.append([c["problem"], c["point"], c["value"], c["n"], interval,
                     "" if c["p_value"] is None else c["p_value"],
                     "" if c["tost_p"] is None else c["tost_p"], verdict])  # fmt: skip
    counts = {v: sum(c["verdict"] == v for c in found)
              for v in ("equivalent", "different", "inconclusive")}  # fmt: skip
    lead = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return head + [f"<p>{len(found)} comparisons: {lead}.</p>", rows_table(columns, rows)]
