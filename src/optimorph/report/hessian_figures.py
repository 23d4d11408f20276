"""The Hessian spectrum of a run (``hessian.json``): density, extreme eigenvalues, layers.

>>> doc = {"examples": 8, "entries": [{"optimizer": "sgd", "seed": 0, "top": [2.0, 1.0],
...        "bottom": [-0.1, 0.0], "trace": 3.0, "trace_se": 0.1, "layers": {"dense0": 1.5},
...        "density": {"grid": [-1.0, 0.0, 1.0, 2.0], "values": [0.1, 0.5, 0.3, 0.1]}}]}
>>> len(hessian_figure(doc).axes)
2
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from optimorph.report.labels import plain_text
from optimorph.report.style import MAX_WIDTH, legend_above, legend_height, series_style

__all__ = ["hessian_figure"]


def hessian_figure(doc: dict[str, Any]) -> Figure | None:
    """Left: the spectral density per optimizer (first seed), log scale, with the top-k and the
    most negative eigenvalues as ticks. Right: the top eigenvalue of each layer's block per
    optimizer (mean over seeds, a dot per seed), the whole Hessian's as a dashed line."""
    entries = [e for e in doc.get("entries", ()) if not e.get("diverged")]
    if not entries:
        return None
    optimizers = list(dict.fromkeys(e["optimizer"] for e in entries))
    labels = [plain_text(opt) for opt in optimizers]
    height = 4.5 + legend_height(labels, MAX_WIDTH)
    fig = Figure(figsize=(MAX_WIDTH, height), layout="constrained")
    ax_d, ax_l = fig.subplots(1, 2)
    handles = []
    for i, opt in enumerate(optimizers):
        first = next(e for e in entries if e["optimizer"] == opt)
        grid = np.asarray(first["density"]["grid"])
        values = np.asarray(first["density"]["values"])
        style = series_style(i)
        color = style["color"]
        handles += ax_d.plot(grid, np.maximum(values, 1e-8), linewidth=1.2, **style)
        for x in (*first["top"], *first["bottom"]):
            ax_d.axvline(x, color=color, alpha=0.35, linewidth=0.8, ymax=0.06)
    ax_d.set_yscale("log")
    ax_d.set_ylim(bottom=1e-6)
    ax_d.set_xlabel("eigenvalue")
    ax_d.set_ylabel("density (stochastic Lanczos quadrature)")
    ax_d.set_title("spectral density (first seed); ticks: top-k and most negative "
                   "eigenvalues", fontsize=9)  # fmt: skip
    ax_d.grid(True, alpha=0.3)

    layers = list(dict.fromkeys(name for e in entries for name in e["layers"]))
    width = 0.8 / len(optimizers)
    x = np.arange(len(layers))
    tops = []
    for i, opt in enumerate(optimizers):
        mine = [e for e in entries if e["optimizer"] == opt]
        per_seed = np.array([[e["layers"].get(name, np.nan) for name in layers] for e in mine])
        pos = x + (i - (len(optimizers) - 1) / 2) * width
        color = series_style(i)["color"]
        hatch = "//" if i >= 10 else None  # the eleventh bar is not the first one again
        ax_l.bar(pos, np.nanmean(per_seed, axis=0), width * 0.9, color=color, alpha=0.6,
                 hatch=hatch)  # fmt: skip
        for row in per_seed:
            ax_l.plot(pos, row, "o", color=color, markersize=3)
        top = np.mean([e["top"][0] for e in mine])
        tops.append(top)
        ax_l.axhline(top, color=color, linestyle="--", linewidth=1.0)
    ax_l.set_xticks(x, layers, rotation=30 if len(layers) > 4 else 0)
    ax_l.set_ylabel("top eigenvalue of the layer's block")
    ax_l.set_title("per layer (bars: mean over seeds; dashed: whole Hessian)", fontsize=9)
    ax_l.grid(True, axis="y", alpha=0.3)
    # Room above the highest dashed line (the largest whole-Hessian eigenvalue), which would
    # otherwise sit on the panel's top edge.
    low, high = ax_l.get_ylim()
    ax_l.set_ylim(min(low, 0.0), max(high, max(tops)) + 0.08 * (max(high, max(tops)) - low))
    examples = doc.get("examples")
    # One legend for both panels (an optimizer has one colour in both), above them.
    legend_above(fig, handles, labels, title=f"Hessian at the final parameters ({examples} "
                 "training examples, float64)")  # fmt: skip
    return fig

