"""Figures of the numerical-equivalence report (DESIGN.md section 3), drawn from plain arrays.

Every input is a NumPy array that the equivalence run stores, so each figure can be redrawn from
stored results without rerunning anything. Figures are built without pyplot (see
``optimorph.report.curves``); save them with ``optimorph.report.figures.save_figure``.

- ``divergence_figure``: the distance d(t) between two trajectories against both noise floors,
  and their ratio against the threshold C.
- ``divergence_grid``: the same for several pairs (rows) and precisions (columns).
- ``phase_diagram_figure``: which pairs are equivalent over mantissa bits x gradient
  heterogeneity.
- ``tracking_animation``: a GIF of phi(A) tracking B in a 2-D PCA projection.

>>> import numpy as np
>>> t = np.arange(1, 51)
>>> floor = np.full((3, 50), 1e-6) * t
>>> fig = divergence_figure(t, 2e-6 * t**1.5 * np.ones((3, 1)), floor, 1.2 * floor, title="demo")
>>> len(fig.axes)
2
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.axes import Axes
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator
from matplotlib.patches import Circle, Patch, Rectangle

from optimorph.atomic import atomic_path
from optimorph.report.labels import plain_text
from optimorph.report.style import (
    MAX_WIDTH,
    legend_above,
    legend_height,
    series_style,
    short_number,
    tidy_log_ticks,
)
from optimorph.stats import growth_exponent, percentile_band

__all__ = [
    "verdict_heatmap",
    "outcome",
    "MAX_FRAMES",
    "NATIVE_MANTISSA_BITS",
    "divergence_figure",
    "divergence_grid",
    "phase_diagram_figure",
    "tracking_animation",
    "slot_ulps_figure",
]

# Explicit mantissa bits (without the implicit leading one) of the formats hardware has.
NATIVE_MANTISSA_BITS = {"bf16": 7, "fp16": 10, "fp32": 23, "fp64": 52}
MAX_FRAMES = 60  # a GIF with more frames grows past what a report page should embed

_PANEL = (5.5, 4.0)  # inches per panel, as in report.curves
_BAND_LEVEL = 0.95
# The phase diagram's one colour scale, from dark (not equivalent, or no pair equivalent) to
# light (equivalent, or every pair): darker means more different on every panel.
_EQUIVALENT_SHADES = ListedColormap(colormaps["Oranges"](np.linspace(0.9, 0.08, 256)))


def divergence_figure(
    t,
    d,
    floor_a,
    floor_b,
    *,
    title: str,
    labels: Sequence[str] = ("A", "B"),
    ratio_c: float = 10.0,
) -> Figure:
    """Trajectory distance against both noise floors (left) and their ratio (right).

    Left, on log-log axes: d(t) = ||theta_A(t) - theta_B(t)||, the noise floors N_A(t) and
    N_B(t), and the threshold C * max(N_A, N_B) dashed, each as the median over seeds with the
    central 95% of the seeds as a band. The median and a percentile band, rather than mean -+ t
    band, because on log axes a symmetric band for the mean can go below zero and vanish. The
    fitted growth law d ~ t^k is given in the legend.

    Right: the ratio d / max(N_A, N_B) per seed (median and band) on a log y axis, with the
    equivalence threshold C as a horizontal line; the pair is p-equivalent when the ratio stays
    below C for all t. If the rule's third term u_p ||theta_A|| matters, fold it into the floors
    before calling (floor = max(N, u_p ||theta||)).

    Zeros (identical trajectories) have no place on log axes and non-finite values (a diverged
    run, a ratio over a zero floor) have none anywhere; both are left out of the drawing and
    counted in a note on the panel, with the first step of a non-finite value, never hidden.

    Args:
      t: [E] steps at which the distances were measured; steps <= 0 are not drawn (log axis).
      d: [S, E] distance per seed and step (or [E] for one seed).
      floor_a, floor_b: [S, E] noise floors of A and B at the same steps.
      title: the figure's title (e.g. "adam vs signsgd @ fp16").
      labels: short names of A and B for the legend.
      ratio_c: the constant C of the equivalence rule.

    Returns:
      A Figure with two axes.

    Raises:
      ValueError: shapes that do not match.
    """
    t, d, floor_a, floor_b = _check_divergence_inputs(t, d, floor_a, floor_b)
    fig = Figure(figsize=(MAX_WIDTH, _PANEL[1] + 0.6), layout="constrained")
    ax_d, ax_r = fig.subplots(1, 2)
    law = _draw_distance(ax_d, t, d, floor_a, floor_b, labels, ratio_c)
    ax_d.set_title("distance and noise floors" + (f", d ~ {law}" if law else ""))
    _draw_ratio(ax_r, t, d, floor_a, floor_b, ratio_c)
    legend_above(fig, *ax_d.get_legend_handles_labels(), title=plain_text(title))
    return fig


def divergence_grid(panels: Sequence[dict[str, Any]], *, kind: str = "distance") -> Figure:
    """Several divergence panels at once: one row per pair, one column per precision.

    Args:
      panels: one dict per (pair, precision) with keys ``pair`` and ``precision`` (str, which
        place the panel; rows and columns follow their first appearance), ``t``, ``d``,
        ``floor_a``, ``floor_b`` (as for ``divergence_figure``), and optionally ``labels`` and
        ``ratio_c``. Cells with no panel say "not run".
      kind: "distance" (d, floors and threshold, as the left panel of ``divergence_figure``) or
        "ratio" (the right panel).

    Raises:
      ValueError: an unknown kind, a missing or unknown key, or two panels for the same cell.

    >>> t = np.arange(1, 11)
    >>> p = dict(t=t, d=np.ones((2, 10)), floor_a=np.ones((2, 10)), floor_b=np.ones((2, 10)))
    >>> fig = divergence_grid([dict(p, pair="a-b", precision=q) for q in ("fp16", "fp32")])
    >>> len(fig.axes)
    2
    """
    kinds = ("distance", "ratio")
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; valid kinds are {list(kinds)}")
    if not panels:
        raise ValueError("no panels to draw")
    required = {"pair", "precision", "t", "d", "floor_a", "floor_b"}
    allowed = required | {"labels", "ratio_c"}
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for panel in panels:
        if missing := required - panel.keys():
            raise ValueError(f"panel is missing keys {sorted(missing)}")
        if unknown := panel.keys() - allowed:
            raise ValueError(f"unknown panel keys {sorted(unknown)}; valid: {sorted(allowed)}")
        cell = (str(panel["pair"]), str(panel["precision"]))
        if cell in cells:
            raise ValueError(f"two panels for pair {cell[0]!r} at precision {cell[1]!r}")
        cells[cell] = panel
    pairs = list(dict.fromkeys(pair for pair, _ in cells))
    precisions = list(dict.fromkeys(precision for _, precision in cells))
    # At most the page's width: a panel shown at its own size keeps its text readable.
    panel = min(0.9 * _PANEL[0], MAX_WIDTH / len(precisions))
    width = panel * len(precisions)
    legend = ["d = |A - B|", "noise floor A", "noise floor B", "C x max floor"]
    row_height = 0.75 * panel + 0.75
    fig = Figure(figsize=(width, row_height * len(pairs) + legend_height(legend, width)),
                 layout="constrained")  # fmt: skip
    # One subfigure per pair: its name once above its row, the precisions as panel titles.
    rows = np.atleast_1d(fig.subfigures(len(pairs), 1))
    handles: dict[str, Any] = {}
    ylabel = "distance, floors (parameter l2)" if kind == "distance" else "d / max floor"
    for row, pair in zip(rows, pairs):
        row.suptitle(plain_text(pair), fontsize="small", x=0.02, ha="left")
        axes = np.atleast_1d(row.subplots(1, len(precisions)))
        for j, (ax, precision) in enumerate(zip(axes, precisions)):
            cell = cells.get((pair, precision))
            if cell is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{precision}: not run", ha="center", va="center",
                        transform=ax.transAxes)  # fmt: skip
                continue
            t, d, fa, fb = _check_divergence_inputs(
                cell["t"], cell["d"], cell["floor_a"], cell["floor_b"]
            )
            c = float(cell.get("ratio_c", 10.0))
            if kind == "distance":
                law = _draw_distance(ax, t, d, fa, fb, cell.get("labels", ("A", "B")), c)
                title = f"{precision}: d ~ {law}" if law else precision
            else:
                _draw_ratio(ax, t, d, fa, fb, c)
                title = f"{precision}: {ax.get_title()}"
            ax.set_title(plain_text(title), fontsize="small")
            ax.tick_params(labelsize="small")
            ax.xaxis.label.set_fontsize("small")
            if j == 0:
                ax.set_ylabel(ylabel, fontsize="small")
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
    # One legend for the grid, at its top where a reader starts: inside a panel it would hide
    # the curves, and below a tall grid it is out of sight.
    legend_above(fig, list(handles.values()), list(handles), width=width)
    return fig


_OUTCOME_COLORS = {"equivalent": "#2b8cbe", "different": "#f4a582", "undecidable": "#bdbdbd"}


def outcome(v: dict) -> str:
    """A stored verdict's outcome (run directories written before outcomes were stored have
    only ``equivalent`` and the reason)."""
    if "outcome" in v:
        return v["outcome"]
    if not v["equivalent"] and "undecidable" in str(v.get("reason", "")):
        return "undecidable"
    return "equivalent" if v["equivalent"] else "different"


def verdict_heatmap(verdicts: dict[str, list[dict]]) -> Figure:
    """Pairs (rows) x precisions (columns): the outcome as colour, d / floor written in each
    cell, ``stalled`` and the first NaN step marked; one figure instead of a panel per cell."""
    precisions = list(verdicts)
    pairs = list(dict.fromkeys((v["a"], v["b"]) for vs in verdicts.values() for v in vs))
    height = 1.2 + 0.42 * len(pairs)
    # A long pair on two lines (A, then | B) rather than cut: the cut was B's hyperparameters.
    names = [f"{a}  |  {b}" if len(a) + len(b) <= 66 else
             f"{textwrap.shorten(a, 70)}\n|  {textwrap.shorten(b, 67)}" for a, b in pairs]  # fmt: skip
    # Room for the longest pair's name (about 0.06 inch a character at 8 pt), the cells and
    # the legend: a fixed width cut long names off when there were few precisions.
    labels = 0.06 * max(len(line) for n in names for line in n.split("\n")) + 0.3
    width = min(MAX_WIDTH, max(3.0 + 1.7 * len(precisions), labels + 1.5 * len(precisions) + 1.4))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    for j, p in enumerate(precisions):
        by_pair = {(v["a"], v["b"]): v for v in verdicts[p]}
        for i, pair in enumerate(pairs):
            v = by_pair.get(pair)
            if v is None:
                continue
            kind = outcome(v)
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=_OUTCOME_COLORS[kind],
                                   edgecolor="white", linewidth=2))  # fmt: skip
            ratio = v.get("distance_ratio")  # stored: "inf" for inf, None for NaN
            if kind == "undecidable":  # both runs broke: no ratio to speak of
                text = "n/a"
            else:
                text = "NaN" if ratio is None else f"{float(ratio):.2g}"
            marks = []
            if v.get("stalled"):
                marks.append("stalled")
            nan = [v.get("first_nan_a"), v.get("first_nan_b")]
            if any(n is not None for n in nan):
                marks.append("NaN @" + "/".join("-" if n is None else str(n) for n in nan))
            label = text + ("\n" + ", ".join(marks) if marks else "")
            ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=8)
    ax.set_xlim(0, len(precisions))
    ax.set_ylim(len(pairs), 0)
    ax.set_xticks(np.arange(len(precisions)) + 0.5, precisions)
    ax.set_yticks(np.arange(len(pairs)) + 0.5, names, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("precision (cell: max over t of d / noise floor, median over seeds)")
    handles = [Patch(color=c, label=k) for k, c in _OUTCOME_COLORS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title("verdict per pair and precision")
    return fig


def phase_diagram_figure(mantissa_bits, heterogeneity, equivalent, pair_labels) -> Figure:
    """Which pairs are p-equivalent over mantissa bits x gradient heterogeneity.

    One small heatmap per pair (x: heterogeneity h = max|g_i| / min|g_i| on a log axis, y:
    mantissa bits as one equal row per width, so the low-bit rows where verdicts change are as
    tall as the wide ones; a cell is light where the pair is equivalent, dark where not), then a
    summary panel with the number of equivalent pairs per cell, on the same scale: darker means
    more different everywhere, and both colour bars say so. The native formats (bf16 7, fp16 10,
    fp32 23, fp64 52 explicit mantissa bits) are marked on the right-hand y axis of each panel.

    Args:
      mantissa_bits: [B] strictly increasing mantissa bit counts.
      heterogeneity: [H] strictly increasing, positive heterogeneity values.
      equivalent: [P, B, H] booleans: pair p is equivalent at (bits b, heterogeneity h).
      pair_labels: P names of the pairs.

    Raises:
      ValueError: shapes or labels that do not match, or axes that are not increasing.

    >>> eq = np.zeros((2, 3, 4), dtype=bool); eq[0, 1:, :2] = True
    >>> fig = phase_diagram_figure([7, 10, 23], [1, 10, 100, 1000], eq, ["a-b", "a-c"])
    >>> [ax.get_title() for ax in fig.axes[:3]]
    ['a-b', 'a-c', 'equivalent pairs (of 2)']
    """
    bits = np.asarray(mantissa_bits, dtype=np.float64)
    hetero = np.asarray(heterogeneity, dtype=np.float64)
    eq = np.asarray(equivalent)
    labels = [str(label) for label in pair_labels]
    if bits.ndim != 1 or hetero.ndim != 1 or eq.ndim != 3:
        raise ValueError("mantissa_bits and heterogeneity must be 1-D and equivalent 3-D")
    if eq.shape != (len(labels), bits.size, hetero.size):
        raise ValueError(
            f"equivalent has shape {eq.shape}, expected (pairs, bits, heterogeneity) = "
            f"{(len(labels), bits.size, hetero.size)}"
        )
    if eq.dtype != bool:
        raise ValueError(f"equivalent must be a boolean array, got dtype {eq.dtype}")
    if not (np.all(np.diff(bits) > 0) and np.all(np.diff(hetero) > 0) and np.all(hetero > 0)):
        raise ValueError("mantissa_bits and heterogeneity must be strictly increasing, h > 0")
    x_edges = _edges(np.log10(hetero), half_width=0.5)
    x_edges = 10.0**x_edges
    # Categorical rows, one per width: the low-bit rows where verdicts change get the same
    # height as the 30-52 bit rows where nothing happens.
    y_edges = np.arange(bits.size + 1) - 0.5
    n = len(labels) + 1
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(min(MAX_WIDTH, 3.3 * ncols + 0.9), 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    # One colour scale on every panel, darker = more different: a pair's panel is light where
    # it is equivalent and dark where not; the summary is light where every pair is equivalent.
    pair_norm = BoundaryNorm([-0.5, 0.5, 1.5], ncolors=_EQUIVALENT_SHADES.N)
    for ax, label, cells in zip(axes, labels, eq):
        mesh = ax.pcolormesh(x_edges, y_edges, cells.astype(float), cmap=_EQUIVALENT_SHADES,
                             norm=pair_norm)  # fmt: skip
        # Pair labels are long spec strings: wrap them so neighbouring titles do not collide.
        ax.set_title(textwrap.fill(plain_text(label), 38), fontsize="small")
    bar = fig.colorbar(mesh, ax=list(axes[: len(labels)]), ticks=[0, 1], shrink=0.8, aspect=15)
    bar.ax.set_yticklabels(["not\nequivalent", "equivalent"], fontsize="x-small")
    bar.set_label("verdict of the pair (darker: different)", fontsize="x-small")
    counts = eq.sum(axis=0)
    summary = axes[len(labels)]
    # Integer bins: one color per count, so "2 of 3 pairs" is a color, not a shade between.
    norm = BoundaryNorm(np.arange(-0.5, len(labels) + 1.5), ncolors=_EQUIVALENT_SHADES.N)
    mesh = summary.pcolormesh(x_edges, y_edges, counts, cmap=_EQUIVALENT_SHADES, norm=norm)
    bar = fig.colorbar(mesh, ax=summary, ticks=np.arange(len(labels) + 1), shrink=0.9)
    bar.set_label(f"equivalent pairs of {len(labels)} (darker: more differ)", fontsize="x-small")
    bar.ax.tick_params(labelsize="x-small")
    summary.set_title(f"equivalent pairs (of {len(labels)})", fontsize="small")
    if counts.size <= 60:
        # Numbers in the cells while they are big enough to read.
        for (bi, hi), count in np.ndenumerate(counts):
            summary.text(
                math.sqrt(x_edges[hi] * x_edges[hi + 1]),
                bi,
                str(count),
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if count < len(labels) / 2 else "black",
            )
    for ax in axes[:n]:
        ax.set_xscale("log")
        ax.set_xlabel("heterogeneity max|g| / min|g|", fontsize="small")
        ax.set_ylabel("mantissa bits (explicit)", fontsize="small")
        ax.set_yticks(np.arange(bits.size), [f"{b:g}" for b in bits], fontsize="x-small")
        # A tick at each column's centre, labelled with its heterogeneity: the columns are
        # the measured values, not a continuous axis.
        ax.set_xticks(hetero, [short_number(h) for h in hetero], fontsize="x-small", rotation=45)
        ax.xaxis.set_minor_locator(NullLocator())
        _mark_formats(ax, bits)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def slot_ulps_figure(panels: Sequence[dict[str, Any]]) -> Figure:
    """Where two implementations part: the distance of each state slot in ulps over steps.

    One panel per diagnosed pair and precision (``optimorph.equivalence.diagnosis``): for each
    slot role (``params``, ``m``, ``v``, ``acc``), the maximum over coordinates of
    |a - b| / (2 u max(|a|, |b|)) at every step of two runs from the same initialisation on the
    same batches, on a log axis, from step 1 (step 0 is the shared initialisation); the parting
    threshold dashed and the step where they part dotted. Zeros (bit-equal slots) and non-finite
    distances are left out and counted in a note on the panel.

    Args:
      panels: dicts with ``title`` (str), ``ulps_per_slot`` (role -> one value per step, step 0
        first; None or "inf" as stored in JSON), and optionally ``step`` and ``slot`` (where
        they part) and ``limit`` (the threshold in ulps).

    Returns:
      A Figure, at most ``MAX_WIDTH`` wide, three panels per row, one legend above.

    >>> fig = slot_ulps_figure([{"title": "A | B at fp32", "step": 2, "slot": "v", "limit": 1024,
    ...                          "ulps_per_slot": {"params": [0, 1, 3e3], "v": [0, 5e4, 6e4]}}])
    >>> len(fig.axes)
    1
    """
    if not panels:
        raise ValueError("no panels to draw")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    roles = list(dict.fromkeys(r for p in panels for r in p["ulps_per_slot"]))
    width = MAX_WIDTH if cols > 1 else 0.6 * MAX_WIDTH
    labels = [*roles, "parting threshold"]
    fig = Figure(figsize=(width, rows * 3.3 + legend_height(labels, width)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes, panels):
        gaps, drawn = [], False
        for role, values in panel["ulps_per_slot"].items():
            # Step 0 is the shared initialisation (0 ulps by construction): drawn from step 1.
            y = np.array([np.nan if v is None else float(v) for v in values])[1:]
            steps = np.arange(1, y.size + 1)
            zeros, bad = int((y == 0).sum()), int((~np.isfinite(y)).sum())
            if zeros:
                gaps.append(f"{role} = 0 ulps (bit-equal) at {zeros} of {y.size} steps")
            if bad:
                first = int(steps[np.argmax(~np.isfinite(y))])
                gaps.append(f"{role} not finite at {bad} steps, first at step {first}")
            shown = np.where((y > 0) & np.isfinite(y), y, np.nan)
            drawn = drawn or bool(np.isfinite(shown).any())
            style = series_style(roles.index(role))
            (line,) = ax.plot(steps, shown, marker=".", markersize=3, linewidth=1.3, label=role,
                              **style)  # fmt: skip
            handles.setdefault(role, line)
        limit = panel.get("limit")
        if limit is not None and math.isfinite(float(limit)):
            handles.setdefault("parting threshold", ax.axhline(
                float(limit), color="black", linestyle="--", linewidth=1.0,
                label="parting threshold"))  # fmt: skip
        title = plain_text(panel["title"])
        if panel.get("step") is not None:
            ax.axvline(panel["step"], color="grey", linestyle=":", linewidth=1.0)
            title += f"\nparts at step {panel['step']} in {panel.get('slot')}"
        else:
            title += "\nno slot parts in the steps looked at"
        ax.set_title(title, fontsize="small")
        if gaps:
            ax.text(0.98, 0.02, "\n".join(gaps), transform=ax.transAxes, fontsize="x-small",
                    ha="right", va="bottom")  # fmt: skip
        if drawn:  # a log axis needs something positive (bit-equal slots are all zeros)
            ax.set_yscale("log")
            tidy_log_ticks(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps: no 2.5
        ax.set_xlabel("step", fontsize="small")
        ax.set_ylabel("max distance over coordinates (ulps)", fontsize="small")
        ax.tick_params(labelsize="small")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    names = [n for n in labels if n in handles]  # the slots, then the threshold
    legend_above(fig, [handles[n] for n in names], names, width=width)
    return fig


def tracking_animation(
    path: str | os.PathLike,
    phi_a_states,
    b_states,
    residual_radius=None,
    fps: float = 10,
    *,
    max_frames: int = MAX_FRAMES,
    labels: Sequence[str] = ("phi(A)", "B"),
    dpi: int = 80,
    step_numbers: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write a GIF of phi(state_A) tracking state_B, projected onto 2-D by PCA.

    The projection is the first two principal components of the union of both paths (numpy
    SVD of the centered [2T, D] stack), so it shows the directions in which the paths actually
    move; an orthonormal projection never lengthens distances, so the circle of radius
    ``residual_radius[t]`` around phi(A)'s point is the projected ball of that radius. Both paths
    are drawn up to the current frame; the axes are fixed over frames so motion is real motion.

    At most ``max_frames`` frames (T is subsampled evenly, always keeping the first and last
    step). The file is written atomically: on any error no (partial) GIF is left at ``path``.

    Args:
      path: destination, ending in ``.gif``; its directory must exist.
      phi_a_states: [T, D] states of A mapped into B's state space by phi.
      b_states: [T, D] states of B.
      residual_radius: [T] nonnegative radii (e.g. the map's fit residual), or None for none.
      fps: frames per second.
      max_frames: frame cap, at most ``MAX_FRAMES``.
      labels: legend names of the two paths.
      dpi: resolution of the frames.
      step_numbers: [T] the training step of each state (the frame caption counts states
        1..T without it).
      title: the figure's title (say which pair, precision and seed it shows).

    Returns:
      ``path`` as a Path.

    Raises:
      ValueError: a path not ending in .gif, shapes that do not match, non-finite states or
        radii, or a frame cap outside 1..MAX_FRAMES.

    >>> import tempfile
    >>> walk = np.cumsum(np.ones((5, 3)), axis=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = tracking_animation(Path(tmp, "track.gif"), walk, walk + 0.1, np.full(5, 0.2))
    ...     out.read_bytes()[:6]
    b'GIF89a'
    """
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"the animation is written as a GIF; path must end in .gif, got {path}")
    if not 1 <= max_frames <= MAX_FRAMES:
        raise ValueError(f"max_frames must be in 1..{MAX_FRAMES}, got {max_frames}")
    a = np.asarray(phi_a_states, dtype=np.float64)
    b = np.asarray(b_states, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"states must both be [T, D] with T >= 1, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("states must be finite; cut the trajectories before a divergence")
    steps = a.shape[0]
    if residual_radius is None:
        radius = np.zeros(steps)
    else:
        radius = np.asarray(residual_radius, dtype=np.float64)
        if radius.shape != (steps,):
            raise ValueError(f"residual_radius must have shape ({steps},), got {radius.shape}")
        if not (np.isfinite(radius).all() and (radius >= 0).all()):
            raise ValueError("residual_radius must be finite and nonnegative")
    if step_numbers is not None and len(step_numbers) != steps:
        raise ValueError(f"step_numbers must have {steps} entries, got {len(step_numbers)}")
    pa, pb, explained = _pca_2d(a, b)
    frames = np.unique(np.linspace(0, steps - 1, min(steps, max_frames)).round().astype(int))

    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    both = np.concatenate([pa, pb])
    center = (both.max(axis=0) + both.min(axis=0)) / 2
    # One square box for every frame; the radius margin keeps the circle inside it.
    half = float(np.ptp(both, axis=0).max()) / 2 * 1.1 + float(radius.max())
    half = half if half > 0 else 1.0  # nothing moves: any box will do
    ax.set_xlim(center[0] - half, center[0] + half)
    ax.set_ylim(center[1] - half, center[1] + half)
    ax.set_aspect("equal")
    if title:
        ax.set_title(textwrap.fill(plain_text(title), 60), fontsize="small")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.grid(True, alpha=0.3)
    (line_a,) = ax.plot([], [], color="C0", label=plain_text(labels[0]), linewidth=1.2)
    (line_b,) = ax.plot([], [], color="C1", label=plain_text(labels[1]), linewidth=1.2,
                        linestyle="--")
    (dot_a,) = ax.plot([], [], "o", color="C0", markersize=5)
    (dot_b,) = ax.plot([], [], "s", color="C1", markersize=5)
    circle = Circle((0.0, 0.0), 0.0, fill=False, color="C0", alpha=0.7)
    if residual_radius is not None:
        ax.add_patch(circle)
    caption = ax.text(0.02, 0.98, "", transform=ax.transAxes, va="top", fontsize="small")
    ax.legend(fontsize="small", loc="lower right")

    def draw(k: int) -> None:
        i = int(frames[k])
        line_a.set_data(pa[: i + 1, 0], pa[: i + 1, 1])
        line_b.set_data(pb[: i + 1, 0], pb[: i + 1, 1])
        dot_a.set_data(pa[i : i + 1, 0], pa[i : i + 1, 1])
        dot_b.set_data(pb[i : i + 1, 0], pb[i : i + 1, 1])
        circle.set_center((pa[i, 0], pa[i, 1]))
        circle.set_radius(radius[i])
        distance = float(np.linalg.norm(a[i] - b[i]))
        where = (f"step {int(step_numbers[i]):,} of {int(step_numbers[-1]):,}"
                 if step_numbers is not None else f"state {i + 1}/{steps}")  # fmt: skip
        caption.set_text(f"{where}   |phi(A) - B| = {distance:.3g}")

    # Lay out once, then freeze: the axes do not move between frames, and constrained layout
    # on every frame would be most of the rendering time.
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    animation = FuncAnimation(
        fig, draw, frames=len(frames), interval=1000.0 / fps, repeat=False, cache_frame_data=False
    )
    with atomic_path(path) as tmp:
        animation.save(tmp, writer=PillowWriter(fps=fps), dpi=dpi)
    return path


def _check_divergence_inputs(t, d, floor_a, floor_b):
    t = np.asarray(t, dtype=np.float64)
    arrays = [np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (d, floor_a, floor_b)]
    if t.ndim != 1:
        raise ValueError(f"t must be 1-D [E], got shape {t.shape}")
    shapes = {x.shape for x in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2 or arrays[0].shape[1] != t.size:
        raise ValueError(
            f"d, floor_a and floor_b must all be [S, E] with E = len(t) = {t.size}, got "
            f"{[x.shape for x in arrays]}"
        )
    return (t, *arrays)


def _draw_distance(ax: Axes, t, d, floor_a, floor_b, labels: Sequence[str], c: float) -> str:
    """Draw d, both floors and the threshold; return the fitted growth law of d ("t^0.52
    (R²=0.98)", "" when it cannot be fitted) for the panel's title: the legend is shared."""
    a_name, b_name = (plain_text(label) for label in labels)
    threshold = c * np.maximum(floor_a, floor_b)
    k, _, r2 = growth_exponent(t, d)
    law = f"t^{k:.2f} (R²={r2:.2f})" if math.isfinite(k) else ""
    drawn = [
        _band_line(ax, t, d, "C0", f"d = |{a_name} - {b_name}|"),
        _band_line(ax, t, floor_a, "C1", f"noise floor {a_name}"),
        _band_line(ax, t, floor_b, "C2", f"noise floor {b_name}"),
        _band_line(ax, t, threshold, "black", f"{c:g} x max floor", linestyle="--", band=False),
    ]
    ax.set_title("distance and noise floors")
    _note_gaps(ax, t, d, "d")
    _finish_log_axes(ax, any(drawn))
    return law


def _draw_ratio(ax: Axes, t, d, floor_a, floor_b, c: float) -> None:
    floor = np.maximum(floor_a, floor_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = d / floor  # d / 0 is inf or NaN: not drawable, and noted on the panel
    drawn = _band_line(ax, t, ratio, "C0", "d / max floor")
    ax.axhline(c, color="black", linestyle="--", linewidth=1.0, label=f"C = {c:g}")
    keep = t > 0
    per_seed = np.where(np.isfinite(ratio[:, keep]), ratio[:, keep], -np.inf).max(axis=1)
    per_seed = per_seed[np.isfinite(per_seed)]
    worst = f", max over t: {np.median(per_seed):.3g}" if per_seed.size else ""
    ax.set_title(f"ratio{worst}")
    _note_gaps(ax, t, ratio, "ratio")
    _finish_log_axes(ax, drawn)


def _band_line(
    ax: Axes, t, values, color: str, label: str, *, linestyle: str = "-", band: bool = True
) -> bool:
    """Median over seeds as a line and the central 95% of the seeds as a band, on t > 0.

    The band is computed from all values (zeros included) and only then are nonpositive results
    hidden, so a seed with d = 0 pulls the median down instead of silently dropping out.

    Returns:
      Whether anything was drawn (some positive, finite value at some t > 0).
    """
    keep = t > 0
    med, low, high = percentile_band(values[:, keep], axis=0, level=_BAND_LEVEL)
    med, low, high = (np.where(x > 0, x, np.nan) for x in (med, low, high))
    ax.plot(t[keep], med, color=color, linestyle=linestyle, linewidth=1.5, label=label)
    band = band and values.shape[0] > 1
    if band:
        ax.fill_between(t[keep], low, high, color=color, alpha=0.2, linewidth=0)
    shown = (med, low, high) if band else (med,)
    return any(np.isfinite(x).any() for x in shown)


def _note_gaps(ax: Axes, t, values, name: str) -> None:
    """Say on the panel what the log axes cannot show: zeros, and non-finite values with the
    first step where one appeared (a NaN in one trajectory only is a difference, DESIGN.md 3)."""
    notes = []
    zeros = int((values == 0).sum())
    if zeros:
        notes.append(f"{name} = 0 at {zeros} of {values.size} points (not drawn on log axes)")
    bad = ~np.isfinite(values)
    if bad.any():
        first = t[np.argmax(bad.any(axis=0))]
        notes.append(f"{name} not finite at {int(bad.sum())} points, first at step {first:g}")
    if notes:
        ax.text(
            0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize="x-small", va="bottom"
        )


def _finish_log_axes(ax: Axes, drawn: bool) -> None:
    # Log scale only on axes that have something positive to show: matplotlib refuses to
    # log-scale an axis with no positive data (all distances zero, identical trajectories).
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        tidy_log_ticks(ax)
    else:
        ax.text(
            0.5, 0.5, "nothing positive to draw", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel("step")
    ax.grid(True, which="major", alpha=0.3)


def _edges(centers: np.ndarray, half_width: float) -> np.ndarray:
    """Cell edges around sorted centers: midpoints inside, mirrored half-gaps at the ends."""
    if centers.size == 1:
        return np.array([centers[0] - half_width, centers[0] + half_width])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate(
        [[centers[0] - (mid[0] - centers[0])], mid, [centers[-1] + (centers[-1] - mid[-1])]]
    )


def _mark_formats(ax: Axes, bits: np.ndarray) -> None:
    """Name the hardware formats on the right-hand axis at their widths (between two rows when
    the grid skips a format's width)."""
    rows = np.arange(bits.size)
    shown = {name: float(np.interp(b, bits, rows)) for name, b in NATIVE_MANTISSA_BITS.items()
             if bits[0] <= b <= bits[-1]}  # fmt: skip
    if shown:
        right = ax.secondary_yaxis("right")
        right.set_yticks(list(shown.values()), list(shown), fontsize="x-small")


def _pca_2d(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both paths projected on the first two principal components of their union.

    Returns the projections [T, 2] each and the fraction of variance of each component. Signs
    are fixed (largest loading positive) so redrawing gives the same picture; missing
    components (D = 1, or no motion at all) are zero.
    """
    union = np.concatenate([a, b])
    centered = union - union.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    basis = np.zeros((2, union.shape[1]))
    basis[: min(2, vt.shape[0])] = vt[:2]
    for row in basis:
        if row.any():
            row *= np.sign(row[np.argmax(np.abs(row))])
    total = float((s**2).sum())
    explained = np.zeros(2)
    if total > 0:
        explained[: min(2, s.size)] = (s[:2] ** 2) / total
    projected = centered @ basis.T
    return projected[: len(a)], projected[len(a) :], explained

