"""One self-contained HTML page per run: config, summary table, figures, extra sections.

The page references nothing outside itself (figures are embedded as base64 ``data:`` URIs, the
style sheet is inline, there is no script), so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optimorph.atomic import write_text_atomic
from optimorph.results.rundir import read_config, read_hessian, read_summary

__all__ = [
    "REPORT_FILE",
    "FIGURE_ORDER",
    "write_report",
    "write_page",
    "figure_html",
    "mapping_table",
    "findings_table",
    "rows_table",
]

REPORT_FILE = "report.html"
FIGURE_ORDER = ("grids.png", "loss_curves.png", "eval_curves.png", "final_metrics.png",
                "probes.png", "smoothness_vs_sharpness.png", "hessian.png")
"""Figures shown first, in this order; any other PNG of the run directory follows by name."""

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; max-width: 100%; }
td { overflow-wrap: anywhere; }
td:first-child code { white-space: nowrap; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; overflow-wrap: normal; }
code { font-size: 0.9em; white-space: pre-wrap; }
figure { margin: 1em 0; }
img { max-width: 100%; }
td.held { color: #0a6b0a; font-weight: 600; }
td.failed { color: #b00020; font-weight: 600; }
td.open { color: #8a6d00; }
p.lead { font-size: 1.1em; }
p.running { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5em 0.8em; }
"""


def write_report(
    run_dir: str | os.PathLike,
    title: str | None = None,
    sections: Iterable[tuple[str, str]] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``report.html`` of a run directory and return its path.

    Args:
      run_dir: a run directory written by ``optimorph.results.write_run``.
      title: the page title; defaults to the directory's name.
      sections: extra ``(heading, html_fragment)`` pairs appended to the page. Headings are
        escaped; fragments are inserted as given (they are HTML), so build them with
        ``html.escape`` around any text that is not yours.
      out_dir: where the figures are and ``report.html`` goes; default the run directory.

    Returns:
      The path of ``report.html``.
    """
    run_dir = Path(run_dir)
    out = Path(run_dir if out_dir is None else out_dir)
    config = read_config(run_dir)
    summary = read_summary(run_dir)
    title = title if title is not None else f"optimorph run {run_dir.resolve().name}"
    progress = config.get("config", {}).get("progress")
    body = [
        f"<h1>{_e(title)}</h1>",
        _in_progress(progress) if progress else "",
        "<h2>Summary</h2>",
        "" if progress else _lead(summary),
        _grids_table(summary),
        _summary_table(summary),
        _diverged_list(summary),
        "<h2>Figures</h2>",
        *(_figure(path) for path in _figures(out)),
        _hessian_section(read_hessian(run_dir)),
        "<h2>Configuration</h2>",
        _mapping_table(config.get("config", {})),
    ]
    if "problem" in config:
        body += ["<h3>Problem</h3>", _mapping_table(config["problem"])]
    run = {k: config[k] for k in ("optimizers", "seeds", "wall_time") if k in config}
    body += ["<h3>Run</h3>", _mapping_table(run)]
    body += ["<h3>Environment</h3>", _mapping_table(config.get("environment", {}))]
    for heading, fragment in sections or ():
        body += [f"<h2>{_e(heading)}</h2>", fragment]
    return write_page(out / REPORT_FILE, title, body)


def write_page(path: str | os.PathLike, title: str, body: Iterable[str]) -> Path:
    """The one HTML builder: a self-contained page (inline style, no script) from fragments."""
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{_e(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
        ]
    )
    path = Path(path)
    write_text_atomic(path, page + "\n")
    return path


def findings_table(findings: Iterable[dict]) -> str:
    """Claim | measured | held / did not hold / open: what a recipe found."""
    label = {True: ("held", "held"), False: ("failed", "did not hold"), None: ("open", "open")}
    rows = []
    for f in findings:
        css, text = label[f.get("held")]
        rows.append(
            f"<tr><td>{_e(f['claim'])}</td><td class='{css}'>{text}</td>"
            f"<td>{_e(f['measured'])}</td></tr>"
        )
    head = "<tr><th>claim (source)</th><th>result</th><th>measured</th></tr>"
    return "<table>" + head + "\n".join(rows) + "</table>"


def rows_table(
    columns: list[str], rows: Iterable[Iterable[Any]], nowrap: Iterable[int] = ()
) -> str:
    """A plain table; numbers right-aligned; the text of the ``nowrap`` columns on one line."""
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    keep = set(nowrap)
    body = []
    for row in rows:
        cells = []
        for j, x in enumerate(row):
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                cells.append(f'<td class="num">{_e(f"{x:.4g}")}</td>')
            elif j in keep:
                cells.append(f'<td class="nowrap">{_e(str(x))}</td>')
            else:
                cells.append(f"<td>{_e(str(x))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>" + "\n".join(body) + "</table>"


def _summary_table(summary: dict[str, Any]) -> str:
    """Optimizer | final metrics as mean ± std over non-diverged seeds | diverged count."""
    optimizers = summary["optimizers"]
    keys = list(dict.fromkeys(k for o in optimizers for k in o["final"]))
    n_seeds = len(summary["seeds"])
    head = "".join(f"<th>{_e(k)}</th>" for k in ["optimizer", *keys, "diverged"])
    rows = []
    for o in optimizers:
        cells = [f"<td><code>{_e(o['optimizer'])}</code></td>"]
        for key in keys:
            cells.append(f'<td class="num">{_e(_format_stats(o["final"].get(key), n_seeds))}</td>')
        cells.append(f'<td class="num">{o["n_diverged"]} / {n_seeds}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        f"<p>Final values: mean ± sample std over the seeds that did not diverge (n shown when "
        f"fewer than {n_seeds}); the training loss is averaged over steps "
        f"{_e(str(summary['train_window']))}, evaluations are at step "
        f"{_e(str(summary['last_eval_step']))}.</p>"
    )
    return f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "</table>\n" + note


def _in_progress(progress: dict[str, Any]) -> str:
    """The banner of an unfinished run: how far, and that final numbers are not final yet."""
    many = progress["groups"] > 1
    groups = f" of program {progress['group']}/{progress['groups']}" if many else ""
    return (
        f'<p class="lead running">Still running: step {progress["done"]:,} of '
        f'{progress["steps"]:,}{groups} when these results were written. Curves stop where the '
        "run is; final values of unfinished runs are blank. Run <code>optimorph report DIR</code> "
        "again to refresh; if the run was interrupted, the same command with "
        "<code>--resume</code> continues it from its checkpoint.</p>"
    )


def _lead(summary: dict[str, Any]) -> str:
    """The answer in one sentence: the ranking by final loss, or each grid's best point."""
    if summary.get("grids"):
        parts = []
        for g in summary["grids"]:
            best = g["best"]
            mean = g["means"][g["members"].index(best)] if best is not None else None
            parts.append(
                f"<code>{_e(g['spec'])}</code>: best <code>{_e(best)}</code> "
                f"(final {_e(g['metric'])} {mean:.4g})"
                if best is not None
                else f"<code>{_e(g['spec'])}</code>: every point diverged"
            )
        return f'<p class="lead">{"; ".join(parts)}.</p>'
    ranked = _ranking(summary)
    if not ranked:
        return '<p class="lead">Every run diverged.</p>'
    key, order = ranked
    if len(order) == 1:
        name, mean = order[0]
        return f'<p class="lead"><code>{_e(name)}</code>: final {_e(key)} {mean:.4g}.</p>'
    text = ", then ".join(f"<code>{_e(n)}</code> ({m:.4g})" for n, m in order)
    return f'<p class="lead">Lowest final {_e(key)} first: {text}.</p>'


def _ranking(summary: dict[str, Any]) -> tuple[str, list[tuple[str, float]]] | None:
    """(metric, [(optimizer, mean)] ascending) by the training-set loss at the last evaluation
    (the minibatch loss without evaluations); optimizers with no finite mean are left out."""
    keys = {k for o in summary["optimizers"] for k in o["final"]}
    key = "train/loss" if "train/loss" in keys else "train_step/loss"
    means = [(o["optimizer"], (o["final"].get(key) or {}).get("mean"))
             for o in summary["optimizers"]]  # fmt: skip
    order = sorted(((n, m) for n, m in means if m is not None), key=lambda nm: nm[1])
    return (key, order) if order else None


def _grids_table(summary: dict[str, Any]) -> str:
    """Per grid: each point's final metric, the best marked, and the rule."""
    out = []
    for g in summary.get("grids", ()):
        rows = []
        for member, mean in zip(g["members"], g["means"]):
            mark = " ← best" if member == g["best"] else ""
            value = "—" if mean is None else f"{mean:.4g}"
            rows.append(f'<tr><td><code>{_e(member)}</code>{mark}</td>'
                        f'<td class="num">{value}</td></tr>')  # fmt: skip
        out.append(
            f"<table><tr><th>{_e(g['spec'])}</th><th>final {_e(g['metric'])} (mean)</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    if out:
        out.append(f"<p>Best point of a grid: {_e(summary['grids'][0]['rule'])}.</p>")
    return "\n".join(out)


def _format_stats(stats: dict[str, Any] | None, n_seeds: int) -> str:
    """``mean ± std``, the mean given to the std's second significant digit (at least 4 digits
    when the std is 0 or unknown): ``1.0800 ± 0.0018``, not ``1.08 ± 0.0018``."""
    if not stats or stats["mean"] is None:
        return "—"
    mean, std = stats["mean"], stats["std"]
    digits = 4
    if std and mean:
        digits = min(12, max(2, _exponent(mean) - _exponent(std) + 2))
    text = f"{mean:#.{digits}g}".rstrip(".")
    if std is not None:
        text += f" ± {std:.2g}"
    if stats["n"] < n_seeds:
        text += f" (n={stats['n']})"
    return text


def _exponent(x: float) -> int:
    return math.floor(math.log10(abs(x)))


def _diverged_list(summary: dict[str, Any]) -> str:
    items = [
        f"<li><code>{_e(o['optimizer'])}</code>: seed {d['seed']} at step {d['step']}</li>"
        for o in summary["optimizers"]
        for d in o["diverged"]
    ]
    if not items:
        return "<p>No run diverged.</p>"
    return "<p>Diverged runs (first step with NaN/inf):</p>\n<ul>" + "".join(items) + "</ul>"


def _figures(run_dir: Path) -> list[Path]:
    # Dot files are excluded: they are other writers' temporary files (results.atomic).
    found = {p.name: p for p in run_dir.glob("*.png") if not p.name.startswith(".")}
    order = [n for n in FIGURE_ORDER if n in found] + sorted(set(found) - set(FIGURE_ORDER))
    return [found[name] for name in order]


_BAND = ("line: mean over seeds, band: min-max over seeds; a cross marks where a diverged seed's "
         "curve ends")
CAPTIONS = {
    "grids.png": "Each grid's final training-set loss against its hyperparameter: marker the "
    "mean over seeds, bar min-max over seeds, ring the best point by the rule above, cross on "
    "the top edge a point where a seed diverged.",
    "loss_curves.png": f"Training loss on each step's minibatch against step; {_BAND}. Right: "
    "the headline evaluation metric.",
    "eval_curves.png": f"Every evaluation metric against step, on the problem's sets; {_BAND}.",
    "final_metrics.png": "Final values per optimizer: a dot per seed, the black bar mean ± sample "
    "std over the seeds that did not diverge.",
    "probes.png": f"Trajectory probes against step (docs/reference.md section 4); {_BAND}.",
    "smoothness_vs_sharpness.png": "Smoothness against sharpness, both per step, at the steps "
    "sharpness was measured: on the dashed line the step's smoothness equals the top curvature "
    "of the full-batch loss.",
    "hessian.png": "The Hessian of the training loss at the final parameters (optimorph hessian): "
    "left the spectral density of the first seed with the extreme eigenvalues as ticks, right "
    "each layer's top block eigenvalue against the whole Hessian's (dashed).",
}
"""What each standard figure shows and what its bands are (the figure's caption)."""


def _hessian_section(doc: dict[str, Any] | None) -> str:
    """The numbers of ``hessian.json``: one row per (optimizer, seed)."""
    if not doc:
        return ""
    rows = []
    for e in doc["entries"]:
        if e.get("diverged"):
            rows.append([e["optimizer"], e["seed"], "diverged", "", "", ""])
            continue
        layers = ", ".join(f"{k} {v:.4g}" for k, v in e["layers"].items())
        rows.append([
            e["optimizer"], e["seed"], ", ".join(f"{x:.4g}" for x in e["top"]),
            ", ".join(f"{x:.4g}" for x in e["bottom"]),
            f"{e['trace']:.4g} ± {e['trace_se']:.2g}", layers,
        ])  # fmt: skip
    head = (
        f"<h3>Hessian at the final parameters</h3><p>On the first {doc['examples']} training "
        f"examples in {doc['dtype']}: Lanczos with full reorthogonalization "
        f"({doc['lanczos_steps']} steps), Hutchinson's trace over {doc['samples']} Rademacher "
        "vectors (± its standard error), each layer's diagonal block alone.</p>"
    )
    columns = ["optimizer", "seed", "top eigenvalues", "most negative", "trace", "per layer (top)"]
    return head + rows_table(columns, rows, nowrap=(4,))


def _figure(path: Path) -> str:
    return figure_html(path, CAPTIONS.get(path.name))


def figure_html(path: Path, caption: str | None = None) -> str:
    """An embedded PNG (base64) with its caption (default: the file name)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = _e(Path(path).name)
    text = _e(caption) if caption else name
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def mapping_table(mapping: dict[str, Any]) -> str:
    """Key | value rows."""
    return _mapping_table(mapping)


def _mapping_table(mapping: dict[str, Any]) -> str:
    if not mapping:
        return "<p>(none recorded)</p>"
    rows = [
        f"<tr><th>{_e(str(key))}</th><td><code>{_e(_format_value(value))}</code></td></tr>"
        for key, value in mapping.items()
    ]
    return "<table>" + "\n".join(rows) + "</table>"


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _e(text: str) -> str:
    return html.escape(text, quote=True)
