"""Pages for comparisons, classes and phase diagrams, drawn from their run directories only.

Summary first: the verdict in one sentence, then the table (precision x pair, with stalled,
NaN and undecidable cells said), then the figures.
"""

from __future__ import annotations

import os
import textwrap
from html import escape
from pathlib import Path

import numpy as np

from optimorph.equivalence.classes import count_text
from optimorph.report.equivalence_figures import (
    divergence_grid,
    outcome,
    phase_diagram_figure,
    slot_ulps_figure,
    tracking_animation,
    verdict_heatmap,
)
from optimorph.report.figures import save_figure
from optimorph.report.html import REPORT_FILE, figure_html, mapping_table, rows_table, write_page
from optimorph.results.equivalence_store import read_curves, read_phase
from optimorph.results.rundir import read_config

__all__ = ["write_equivalence_report"]


def write_equivalence_report(run_dir: str | os.PathLike) -> Path:
    """Redraw the figures of a compare, classes or phase-diagram run and write its page."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    kind = config.get("kind")
    if kind == "phase-diagram":
        body = _phase_body(run_dir)
    else:
        body = _comparison_body(run_dir, kind)
    body += ["<h2>Settings</h2>", mapping_table(config.get("config", {}))]
    body += ["<h2>Environment</h2>", mapping_table(config.get("environment", {}))]
    return write_page(run_dir / REPORT_FILE, f"optimorph {kind}", body)


def _comparison_body(run_dir: Path, kind: str) -> list[str]:
    doc, panels = read_curves(run_dir)
    verdicts = doc["precisions"] if kind == "compare" else doc["pairs"]
    rows, sentence, open_pairs = [], [], {}
    for precision, items in verdicts.items():
        for v in items if isinstance(items, list) else [items]:
            word = outcome(v)
            rows.append([precision, v["a"], v["b"], word, _num(v["distance_ratio"]),
                         _num(v["defect_ab"]), v["map"], _difference(v), v["reason"]])  # fmt: skip
            open_pairs[precision] = open_pairs.get(precision, 0) + (word == "undecidable")
            if kind == "compare":
                sentence.append(f"{word} at {precision}")
    if kind == "compare":
        lead = f"{doc['a']} and {doc['b']} on {doc['problem']}: " + ", ".join(sentence) + "."
    else:
        # An undecidable pair has no edge: a class count that rests on it is no evidence.
        counts = ", ".join(
            f"{count_text(len(c), doc.get('class_range', {}).get(p), noun='')} at {p}"
            + (f" ({open_pairs[p]} pairs undecidable)" if open_pairs.get(p) else "")
            for p, c in doc["precisions"].items()
        )
        lead = f"{len(doc['optimizers'])} optimizers on {doc['problem']}: classes {counts}."
    body = [f"<h1>optimorph {kind}</h1>", f"<p class='lead'>{lead}</p>"]
    if kind == "classes":
        spread = doc.get("class_range", {})  # runs before the seed-split ranges have none
        class_rows = [[p, count_text(len(c), spread.get(p), noun="", brief=True),
                       " | ".join(" ~ ".join(m) for m in c)]
                      for p, c in doc["precisions"].items()]  # fmt: skip
        body += ["<h2>Classes</h2>", rows_table(["precision", "classes", "members"], class_rows)]
    per_precision = {p: (items if isinstance(items, list) else [items])
                     for p, items in verdicts.items()}  # fmt: skip
    heatmap = save_figure(verdict_heatmap(per_precision), run_dir / "verdicts.png")
    body += [
        _image(heatmap, "Every verdict at a glance: blue equivalent, orange different, grey "
               "undecidable (both diverged: differently, or before any finite step to compare); "
               "the number is max over t of d / floor; stalled runs and the first NaN step (A/B) "
               "are marked."),
        "<h2>Verdicts</h2>",
        rows_table(
            ["precision", "A", "B", "verdict", "d / floor (max)", "defect A->B", "map",
             "final A - B (95% CI)", "reason"],
            rows,
        ),  # fmt: skip
        f"<p>Equivalent when d(t) <= C x max(floor_A, floor_B, u ||theta||) for every t, C = "
        f"{doc['C']}, with the state maps' condition numbers bounded. Final A - B: the paired "
        "difference of the final metric over seeds (same seed, same initialisation and batches), "
        f"mean and 95% t-interval.{_blank_caption(per_precision)}</p>",
    ]
    body += _parting(run_dir, per_precision, kind)
    grid = [{"t": p["t"], "d": p["d"], "floor_a": p["floor_a"], "floor_b": p["floor_b"],
             "labels": ("A", "B"), "pair": f"A: {p['a']}\nB: {p['b']}",
             "precision": p["precision"]} for p in panels]  # fmt: skip
    figures = [(save_figure(divergence_grid(grid), run_dir / "divergence.png"),
                "Trajectory distance d(t) between A and B against each one's rounding noise "
                "floor (median over replicas; bands over seeds).")]  # fmt: skip
    first = panels[0]
    floor = np.maximum(first["floor_a"][0], first["floor_b"][0]) * doc["C"]
    # A diverged run has no point to draw: animate the evaluations before the first NaN/inf.
    finite = (np.isfinite(first["path_a"]).all(axis=-1) & np.isfinite(first["path_b"]).all(axis=-1)
              & np.isfinite(floor))  # fmt: skip
    keep = len(finite) if finite.all() else int(np.argmin(finite))
    if keep:
        gif = tracking_animation(
            run_dir / "tracking.gif", first["path_a"][:keep], first["path_b"][:keep],
            floor[:keep], step_numbers=first["t"][:keep],
            title=f"{first['precision']}, seed 0: phi(A) = phi({first['a']}), B = {first['b']}",
        )  # fmt: skip
        caption = (f"phi(A) tracking B at {first['precision']}, seed 0 (PCA projection); the "
                   "circle is C times the noise floor.")  # fmt: skip
        if keep < len(finite):
            caption += f" Shown to step {int(first['t'][keep - 1])}: a run diverged after it."
        figures.append((gif, caption))
    body.append("<h2>Figures</h2>")
    body += [_image(path, caption) for path, caption in figures]
    return body


_MAX_PARTING_PANELS = 6


def _parting(run_dir: Path, verdicts: dict[str, list[dict]], kind: str) -> list[str]:
    """The diagnosed verdicts' per-slot distance in ulps over steps, with its heading and
    caption ([] when no verdict was diagnosed)."""
    diagnosed = [(p, v) for p, items in verdicts.items() for v in items if v.get("diagnosis")]
    if not diagnosed:
        return []
    panels = []
    for p, v in diagnosed[:_MAX_PARTING_PANELS]:
        d = v["diagnosis"]
        title = p if kind == "compare" else textwrap.fill(f"{p}: {v['a']} | {v['b']}", 48)
        panels.append({"title": title, "ulps_per_slot": d["ulps_per_slot"], "step": d["step"],
                       "slot": d["slot"], "limit": d.get("limit")})  # fmt: skip
    path = save_figure(slot_ulps_figure(panels), run_dir / "slot_ulps.png")
    shown = "" if len(diagnosed) <= len(panels) else (
        f" The first {len(panels)} of {len(diagnosed)} diagnosed verdicts are drawn.")
    caption = (
        "Each verdict found different, diagnosed: A and B trained from the same initialisation "
        "on the same batches, each state slot (aligned by role: Adam's first moment is m in "
        "optimorph, mu in optax, exp_avg in torch) compared at every step as the largest "
        "distance over coordinates in ulps of the format, |a - b| / (2u max(|a|, |b|)). Dashed: "
        "the distance above which a slot counts as parted; dotted: the step where they part. "
        f"The named cause is in the verdict's reason above.{shown}"
    )
    return ["<h2>Where they part</h2>", figure_html(path, caption)]


def _phase_body(run_dir: Path) -> list[str]:
    doc, arrays = read_phase(run_dir)
    labels = [f"{a} | {b}" for a, b in doc["pairs"]]
    eq = arrays["equivalent"]
    lead = "; ".join(
        f"{label}: equivalent in {int(eq[p].sum())} of {eq[p].size} cells"
        for p, label in enumerate(labels)
    )
    fig = phase_diagram_figure(doc["mantissa_bits"], doc["heterogeneity"], eq, labels)
    path = save_figure(fig, run_dir / "phase_diagram.png")
    return [
        "<h1>optimorph phase diagram</h1>",
        f"<p class='lead'>{lead}.</p>",
        "<h2>Figures</h2>",
        figure_html(path, "Equivalent pairs over mantissa bits x gradient heterogeneity."),
    ]


def _image(path: Path, caption: str) -> str:
    if path.suffix == ".gif":
        import base64

        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/gif;base64,{data}" alt="{path.name}">'
                f"<figcaption>{caption}</figcaption></figure>")  # fmt: skip
    return figure_html(path, caption)


def _difference(v: dict) -> str:
    """``metric: mean [low, high]`` of the paired final difference; a dash when there is none,
    with the reason when the stored verdict gives one (``tests_note``)."""
    mean, ci = v.get("final_diff"), v.get("final_diff_ci") or [None, None]
    if mean is None or None in ci:
        return f"— ({v['tests_note']})" if v.get("tests_note") else "—"
    return f"{v['final_metric']}: {mean:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def _blank_caption(verdicts: dict[str, list[dict]]) -> str:
    """The blank cells of the final-difference column explained by what happened in this run,
    not by a list of cases that could happen ("" when no cell is blank).

    >>> ok = {"final_diff": 1.0, "final_diff_ci": [0.5, 1.5], "final_metric": "test/loss"}
    >>> _blank_caption({"fp32": [ok]})
    ''
    >>> _blank_caption({"fp32": [ok], "fp16": [{"final_diff": None, "tests_note": "1 seed"}]})
    ' Blank at fp16: 1 seed.'
    """
    said: dict[str, list[str]] = {}  # the reason -> the precisions where it occurred
    for precision, items in verdicts.items():
        for v in items:
            if _difference(v).startswith("—"):
                # Stored verdicts of earlier versions have no tests_note: the possible causes.
                note = v.get("tests_note") or "a seed's final value is not finite, or one seed"
                said.setdefault(note, []).append(precision)
    return "".join(
        f" Blank at {', '.join(dict.fromkeys(ps))}: {escape(note)}."
        for note, ps in said.items()
    )


def _num(x) -> float | str:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)
