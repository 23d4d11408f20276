"""One self-contained HTML page per run: config, summary table, figures, extra sections.

The page references nothing outside itself (figures are embedded as base64 ``data:`` URIs, the
style sheet is inline, there is no script), so it can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optimorph.atomic import write_text_atomic
from optimorph.experiments.findings import FAILED, HELD, NOT_JUDGED, OPEN, status_of
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
    "cell_text",
    "format_number",
]

REPORT_FILE = "report.html"
FIGURE_ORDER = ("grids.png", "loss_curves.png", "eval_curves.png", "final_metrics.png",
                "probes.png", "smoothness_vs_sharpness.png", "hessian.png")
"""Figures shown first, in this order; any other PNG of the run directory follows by name."""

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
span.w { white-space: nowrap; }
code { font-size: 0.9em; white-space: pre-wrap; }
table.wide { font-size: 0.85em; }
figure { margin: 1em 0; }
img { max-width: 100%; }
td.held { color: #0a6b0a; font-weight: 600; }
td.failed { color: #b00020; font-weight: 600; }
td.open { color: #8a6d00; }
td.notjudged { color: #555; font-style: italic; }
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
        _summary_table(summary, config.get("config", {}).get("state_bytes_per_param")),
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
    """Claim | status | measured: what a recipe found (held, did not hold, open, or not judged
    at quick scale, the last shown neutrally: it is no verdict)."""
    css_of = {HELD: "held", FAILED: "failed", OPEN: "open", NOT_JUDGED: "notjudged"}
    rows = []
    for f in findings:
        text = status_of(f)
        css = css_of[text]
        rows.append(
            f"<tr><td>{cell_text(f['claim'])}</td><td class='{css}'>{text}</td>"
            f"<td>{cell_text(f['measured'])}</td></tr>"
        )
    head = "<tr><th>claim (source)</th><th>result</th><th>measured</th></tr>"
    return "<table>" + head + "\n".join(rows) + "</table>"


def rows_table(
    columns: list[str], rows: Iterable[Iterable[Any]], nowrap: Iterable[int] = ()
) -> str:
    """A plain table; numbers right-aligned and rounded by :func:`format_number`; text wrapped
    only between words (:func:`cell_text`), the ``nowrap`` columns on one line."""
    head = "".join(f"<th>{cell_text(c)}</th>" for c in columns)
    keep = set(nowrap)
    body = []
    for row in rows:
        cells = []
        for j, x in enumerate(row):
            if _is_number(x):
                cells.append(f'<td class="num">{cell_text(format_number(x))}</td>')
            elif j in keep:
                cells.append(f'<td class="nowrap">{_e(str(x))}</td>')
            else:
                cells.append(f"<td>{cell_text(x)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{_wide(len(columns))}><tr>{head}</tr>" + "\n".join(body) + "</table>"


def _wide(n_columns: int) -> str:
    """The class of a table with many columns: a smaller font, so that it fits the page."""
    return ' class="wide"' if n_columns > 7 else ""


def _summary_table(summary: dict[str, Any], state_bytes: list[float] | None = None) -> str:
    """Optimizer | state bytes per parameter (runs that recorded it) | final metrics as mean ±
    std over non-diverged seeds | diverged count."""
    optimizers = summary["optimizers"]
    keys = list(dict.fromkeys(k for o in optimizers for k in o["final"]))
    n_seeds = len(summary["seeds"])
    memory = ["state bytes / param"] if state_bytes is not None else []
    head = "".join(f"<th>{cell_text(k)}</th>" for k in ["optimizer", *memory, *keys, "diverged"])
    rows = []
    for o in optimizers:
        cells = [f"<td><code>{cell_text(o['optimizer'])}</code></td>"]
        if state_bytes is not None:
            cells.append(f'<td class="num">{format_number(state_bytes[o["index"]])}</td>')
        for key in keys:
            stats = _format_stats(o["final"].get(key), n_seeds)
            cells.append(f'<td class="num">{cell_text(stats)}</td>')
        cells.append(f'<td class="num">{o["n_diverged"]} / {n_seeds}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        f"<p>Final values: mean ± sample std over the seeds that did not diverge (n shown when "
        f"fewer than {n_seeds}); the training loss is averaged over steps "
        f"{_e(str(summary['train_window']))}, evaluations are at step "
        f"{_e(str(summary['last_eval_step']))}.</p>"
    )
    if state_bytes is not None:
        note += (
            "<p>State bytes / param: the optimizer state's memory per parameter under the run's "
            "precision policy, scales of block formats included, the step counter not counted."
            "</p>"
        )
    wide = _wide(len(keys) + 2 + len(memory))
    return f"<table{wide}><tr>{head}</tr>\n" + "\n".join(rows) + "</table>\n" + note


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
    """The answer in one sentence with the rule it follows (``summary["ranking"]``, one rule for
    optimizers and grid points): the ranking, or each grid's best point."""
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
        rule = summary["grids"][0]["rule"]
        return f'<p class="lead">{"; ".join(parts)}; best {_e(rule)}.</p>'
    ranking = summary["ranking"]
    means = {o["optimizer"]: m for o, m in zip(summary["optimizers"], ranking["means"])}
    key, rule = _e(ranking["metric"]), _e(ranking["rule"])
    if all(m is None for m in means.values()):
        return '<p class="lead">Every run diverged.</p>'
    if len(means) == 1:
        ((name, mean),) = means.items()
        return f'<p class="lead"><code>{_e(name)}</code>: final {key} {mean:.4g}.</p>'
    if not ranking["order"]:
        return f'<p class="lead">Every optimizer has a diverged seed: none is ranked {rule}.</p>'
    text = ", then ".join(f"<code>{_e(n)}</code> ({means[n]:.4g})" for n in ranking["order"])
    left = [f"<code>{_e(n)}</code>" for n in means if n not in ranking["order"]]
    out = f"; left out: {', '.join(left)}" if left else ""
    return f'<p class="lead">Ranked {rule}: {text}{out}.</p>'


def _grids_table(summary: dict[str, Any]) -> str:
    """Per grid: each point's final metric, the best marked, and the rule."""
    out = []
    for g in summary.get("grids", ()):
        rows = []
        for member, mean in zip(g["members"], g["means"]):
            mark = " ← best" if member == g["best"] else ""
            value = "—" if mean is None else format_number(mean)
            rows.append(f'<tr><td><code>{cell_text(member)}</code>{mark}</td>'
                        f'<td class="num">{value}</td></tr>')  # fmt: skip
        out.append(
            f"<table><tr><th>{cell_text(g['spec'])}</th>"
            f"<th>final {cell_text(g['metric'])} (mean)</th></tr>"
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
        text += f" ±\u00a0{std:.2g}"  # a narrow column breaks before the ±, not after it
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
    "grids.png": "Each grid's final value of the metric it is ranked by against its "
    "hyperparameter: marker the "
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
        f"<tr><th>{cell_text(key)}</th><td><code>{cell_text(_format_value(value))}</code></td></tr>"
        for key, value in mapping.items()
    ]
    return "<table>" + "\n".join(rows) + "</table>"


def _format_value(value: Any) -> str:
    """A setting as text: strings as they are, anything else as JSON with its floats rounded by
    :func:`format_number` (``wall_time 109.7``, not ``109.69708901199999``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}: {_format_value_json(v)}"
                 for k, v in value.items())  # fmt: skip
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value_json(v) for v in value) + "]"
    if _is_number(value):
        return format_number(value)
    return json.dumps(value, ensure_ascii=False)


def _format_value_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else _format_value(value)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def format_number(x: float, digits: int = 4) -> str:
    """A number as every table shows it: an integer as it is; a float that a person typed (at
    most 6 significant digits: lr=0.15, tau=5e4) exactly; any other float, a measurement, to
    ``digits`` significant digits. Exponents lose their padding (1e-8, not 1e-08).

    >>> [format_number(x) for x in (109.69708901199999, 0.15, 5e4, 1e-8, 3, 7.595123e15)]
    ['109.7', '0.15', '50000', '1e-8', '3', '7.595e+15']
    """
    if isinstance(x, numbers.Integral):
        return str(int(x))
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    typed = f"{x:.6g}"
    text = typed if float(typed) == x else f"{x:.{digits}g}"
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", text)


# Where a table may break a line: at spaces and after , / | (never inside a word). Browsers
# also break after a hyphen ("1e-" / "08", "A-" / ">B"): pieces holding one are kept whole.
_SPACES = re.compile(r"(\s+)")
_AFTER = re.compile(r"(?<=[,/|])(?=\S)")


def cell_text(text: Any) -> str:
    """``text`` as HTML for a table cell: escaped, with a line break allowed at spaces and after
    , / | only, so a narrow column wraps a spec at its commas, never mid-word.

    >>> cell_text("adam(lr=1e-3,b1=0.9) | sgd")
    '<span class="w">adam(lr=1e-3,</span><wbr>b1=0.9) | sgd'
    """
    out = []
    for part in _SPACES.split(str(text)):
        if not part or part.isspace():
            out.append(part)
            continue
        pieces = [p for p in _AFTER.split(part) if p]
        out.append("<wbr>".join(f'<span class="w">{_e(p)}</span>' if "-" in p else _e(p)
                                for p in pieces))  # fmt: skip
    return "".join(out)


def _e(text: str) -> str:
    return html.escape(text, quote=True)
