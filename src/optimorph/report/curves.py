"""Figures of a run: training-loss curves, evaluation curves, final metrics over seeds.

Each function takes a ``TrainResult`` and returns a ``matplotlib.figure.Figure`` built without
pyplot (no global figure registry, no backend switching: safe in servers, tests and threads).
Curves show the mean over seeds as a line and the min-max range over seeds as a band, both over
the runs that are finite and have not diverged at that step, so a diverged seed drops out of the
curve from the step it broke instead of turning the whole mean into NaN.

>>> import numpy as np
>>> from optimorph.engine.result import TrainResult
>>> r = TrainResult(["sgd"], [0], np.arange(1, 4), np.ones((1, 1, 3)), np.arange(0, 4, 3),
...                 {"test/loss": np.ones((1, 1, 2))}, np.full((1, 1), -1))
>>> len(loss_figure(r).axes)
2
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from optimorph.engine.result import TrainResult
from optimorph.optimizers import resolve
from optimorph.report.labels import plain_text
from optimorph.report.style import (
    MAX_WIDTH,
    legend_above,
    legend_height,
    series_marker,
    series_style,
    tidy_log_ticks,
)
from optimorph.results.summary import FINAL_FRACTION, TRAIN_LOSS_KEY, final_values, summarize

__all__ = [
    "loss_figure",
    "eval_figure",
    "final_metrics_figure",
    "probe_figure",
    "grid_figure",
    "headline_eval_key",
    "stability_edge",
    "smoothness_figure",
]

_PANEL = (5.5, 4.0)  # inches per panel


def loss_figure(result: TrainResult) -> Figure:
    """Training loss against step per optimizer, beside the headline evaluation metric if any.

    The loss axis is logarithmic when every finite loss is positive. The second panel shows
    ``headline_eval_key(result.evals)`` (held-out accuracy when there is one).
    """
    key = headline_eval_key(list(result.evals)) if result.evals else None
    n_panels = 2 if key else 1
    width = min(MAX_WIDTH, _PANEL[0] * n_panels)
    labels = _series_labels(result)
    fig = Figure(figsize=(width, _PANEL[1] + legend_height(labels, width)), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    steps, losses, window = _smoothed(result.steps, result.train_loss)
    _plot_curves(axes[0], result, steps, losses)
    axes[0].set_ylabel(_ylabel("loss"))
    title = "training loss (minibatch)"
    axes[0].set_title(f"{title}, mean of {window} steps" if window > 1 else title)
    _log_if_positive(axes[0], result.train_loss)
    if key:
        _plot_curves(axes[1], result, result.eval_steps, result.evals[key])
        axes[1].set_title(key)
        axes[1].set_ylabel(_ylabel(key))
        if key.endswith("loss"):
            _log_if_positive(axes[1], result.evals[key])
    legend_above(fig, *axes[0].get_legend_handles_labels())
    return fig


def _series_labels(result: TrainResult) -> list[str]:
    """The legend label of each optimizer's curve: its spec, and how many seeds diverged."""
    labels = []
    for i, name in enumerate(result.optimizers):
        n_div = int((result.diverged_at[i] >= 0).sum())
        diverged = f" ({n_div}/{len(result.seeds)} diverged)" if n_div else ""
        labels.append(plain_text(name) + diverged)
    return labels


def _smoothed(steps: np.ndarray, losses: np.ndarray, points: int = 200):
    """Minibatch losses averaged over consecutive windows so that about ``points`` remain.

    Per-step minibatch losses are too noisy to compare optimizers by eye; window means keep the
    trend and NaNs (a diverged run stays NaN from its window on).
    """
    window = max(1, len(steps) // points)
    if window == 1:
        return steps, losses, 1
    n = (len(steps) // window) * window
    shaped = losses[..., :n].reshape(*losses.shape[:-1], n // window, window)
    return steps[window - 1 : n : window], shaped.mean(axis=-1), window


def eval_figure(result: TrainResult, keys: Sequence[str] | None = None) -> Figure:
    """One panel per evaluation metric (all of ``result.evals`` unless ``keys`` is given).

    Raises:
      ValueError: there is no evaluation metric to draw.
    """
    keys = list(result.evals) if keys is None else list(keys)
    if not keys:
        raise ValueError("the result has no evaluation metrics to plot")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    width = min(MAX_WIDTH, _PANEL[0] * ncols)
    height = min(_PANEL[1], 0.8 * width / ncols + 0.2) * nrows
    labels = _series_labels(result)
    fig = Figure(figsize=(width, height + legend_height(labels, width)), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        _plot_curves(ax, result, result.eval_steps, result.evals[key])
        ax.set_title(key)
        ax.set_ylabel(_ylabel(key))
        if key.endswith("loss"):
            _log_if_positive(ax, result.evals[key])
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    legend_above(fig, *axes[0].get_legend_handles_labels())
    return fig


def final_metrics_figure(result: TrainResult) -> Figure:
    """Final value of every metric per optimizer: each seed as a dot, mean ± std as a bar.

    The numbers are those of ``summary.json``: the final training loss is averaged over the last
    ``FINAL_FRACTION`` of the steps, evaluation metrics are taken at the last evaluation, and
    diverged seeds are left out (their count is added to the optimizer's label). Optimizers are
    rows, named once on the left (specs wrapped at their commas), so the figure keeps the page's
    width however many optimizers there are.
    """
    summary = summarize(result)
    finals = final_values(result)
    ok = result.diverged_at < 0
    labels = [
        textwrap.fill(plain_text(o["optimizer"]), 40)
        + (f"\n({o['n_diverged']} diverged)" if o["n_diverged"] else "")
        for o in summary["optimizers"]
    ]
    y = np.arange(len(result.optimizers))
    # Fixed offsets rather than random jitter: the figure is reproducible byte for byte.
    jitter = np.linspace(-0.2, 0.2, len(result.seeds)) if len(result.seeds) > 1 else np.zeros(1)
    ncols = min(3, len(finals))
    nrows = math.ceil(len(finals) / ncols)
    lines = sum(label.count("\n") + 1 for label in labels)
    panel_height = 0.9 + 0.18 * lines + 0.1 * len(labels)
    fig = Figure(figsize=(MAX_WIDTH, panel_height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, (key, values) in zip(axes.ravel(), finals.items()):
        for i, opt in enumerate(summary["optimizers"]):
            stats = opt["final"][key]
            ax.scatter(values[i][ok[i]], y[i] + jitter[ok[i]], s=14, zorder=3,
                       color=series_style(i)["color"], marker=series_marker(i))  # fmt: skip
            if stats["mean"] is not None:
                ax.errorbar(stats["mean"], y[i], xerr=stats["std"] or 0.0, fmt="|",
                            markersize=14, capsize=4, color="black", zorder=4)  # fmt: skip
        ax.set_title(key + (f" (last {FINAL_FRACTION:.0%})" if key == TRAIN_LOSS_KEY else ""),
                     fontsize="medium")  # fmt: skip
        ax.grid(True, axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize="small")
    axes[0, 0].set_yticks(y, labels)  # shared: the other rows' first panels show them too
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize="small")
    axes[0, 0].set_ylim(len(y) - 0.5, -0.5)  # the first optimizer on top, as in the tables
    for ax in axes.ravel()[len(finals) :]:
        ax.set_visible(False)
    return fig


def grid_figure(result: TrainResult) -> Figure | None:
    """One panel per hyperparameter grid over one axis: the final metric the best point is
    chosen by (``summary["grids"]``) against the grid's values, mean over seeds with a min-max
    bar, the best point ringed, diverged points as a cross on the top edge. None without such
    a grid."""
    summary = summarize(result)
    grids = [g for g in summary.get("grids", ()) if len(g["axes"]) == 1]
    if not grids:
        return None
    finals = final_values(result)
    ok = result.diverged_at < 0
    index = {name: i for i, name in enumerate(result.optimizers)}
    ncols = min(2, len(grids))
    nrows = math.ceil(len(grids) / ncols)
    width = min(MAX_WIDTH, _PANEL[0] * ncols)
    fig = Figure(figsize=(width, (_PANEL[1] + 0.3) * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, g in zip(axes, grids):
        (axis, values), = g["axes"].items()
        rows = [index[m] for m in g["members"]]
        per_seed = finals[g["metric"]]
        x = np.asarray(values, dtype=float)
        # Diverged seeds left out, as in the choice: [seeds, points] with NaN where diverged.
        mean, low, high = _seed_band(np.where(ok[rows], per_seed[rows], np.nan).T)
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o-", capsize=4, color="C0",
                    label="mean over seeds (bar: min-max)")  # fmt: skip
        bad = np.array([not ok[r].all() for r in rows])
        if bad.any():
            ax.plot(x[bad], np.full(bad.sum(), 1.0), "x", color="C3", markersize=9,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label="a seed diverged (left out of the choice)")  # fmt: skip
        best = ""
        if g["best"] is not None:
            b = g["members"].index(g["best"])
            ax.plot([x[b]], [mean[b]], "o", markersize=14, markerfacecolor="none",
                    markeredgecolor="C2", markeredgewidth=2, label="best point")  # fmt: skip
            best = f"\nbest: {axis}={values[b]:g}"
        if (x > 0).all() and x.max() >= 10 * x.min():
            ax.set_xscale("log")
        _log_if_positive(ax, mean)
        tidy_log_ticks(ax)
        ax.set_xlabel(axis)
        ax.set_ylabel(f"final {g['metric']} (objective value)")
        ax.set_title(plain_text(g["spec"]) + best, fontsize="medium")
        ax.grid(True, alpha=0.3, which="both")
    for ax in axes[len(grids) :]:
        ax.set_visible(False)
    # One legend for every panel, above them: inside a panel it covers points of the curve.
    entries = {}
    for ax in axes[: len(grids)]:
        entries.update(zip(*reversed(ax.get_legend_handles_labels())))
    legend_above(fig, list(entries.values()), list(entries))
    return fig


def headline_eval_key(keys: Sequence[str]) -> str:
    """The evaluation metric a one-glance figure should show: held-out before training-set
    metrics, accuracy before anything else, otherwise the first key."""
    # min keeps the first of equally ranked keys, so the run's own order breaks ties.
    return min(keys, key=lambda k: (k.startswith("train/"), not k.endswith("/accuracy")))


def _plot_curves(ax: Axes, result: TrainResult, steps: np.ndarray, values: np.ndarray) -> None:
    """Mean over seeds as a line and min-max over seeds as a band, per optimizer.

    A run's values from its divergence step on are left out even where finite: the accuracy of
    NaN parameters is a number, but not a measurement of the optimizer.
    """
    diverged = result.diverged_at[:, :, None]
    after = (diverged >= 0) & (np.asarray(steps)[None, None, :] >= diverged)
    values = np.where(after, np.nan, values)
    for i, label in enumerate(_series_labels(result)):
        mean, low, high = _seed_band(values[i])
        (line,) = ax.plot(steps, mean, label=label, linewidth=1.5, **series_style(i))
        if len(result.seeds) > 1:
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        _mark_divergences(ax, steps, values[i], result.diverged_at[i], line.get_color())
    ax.set_xlabel("step (optimizer updates)")
    if len(steps):  # the whole run's length, also while it is still going
        ax.set_xlim(0, float(np.max(steps)))
    ax.grid(True, alpha=0.3)


def _mark_divergences(ax: Axes, steps, values: np.ndarray, diverged: np.ndarray, color) -> None:
    """A cross where each diverged seed's curve ends: its last finite value before the step it
    diverged at (on the bottom edge when it had none)."""
    for j in np.flatnonzero(diverged >= 0):
        finite = np.flatnonzero(np.isfinite(values[j]))
        if finite.size:
            k = finite[-1]
            ax.plot([steps[k]], [values[j, k]], "x", color=color, markersize=8, mew=2)
        else:
            ax.plot([diverged[j]], [0.0], "x", color=color, markersize=8, mew=2, clip_on=False,
                    transform=ax.get_xaxis_transform())  # fmt: skip


def _ylabel(key: str) -> str:
    """A y label with its unit: losses in the problem's objective, accuracies as fractions."""
    if key.endswith("accuracy"):
        return "accuracy (fraction correct)"
    if key.endswith("loss"):
        return "loss (objective value)"
    return key.rsplit("/", 1)[-1]


def _seed_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over axis 0 of the finite entries; NaN where no entry is finite.

    Written with masks instead of np.nanmean/nanmin, which warn on all-NaN columns (the steps
    after every seed diverged) and treat inf as a number.
    """
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / count
    low = np.where(finite, values, np.inf).min(axis=0)
    high = np.where(finite, values, -np.inf).max(axis=0)
    none = count == 0
    return mean, np.where(none, np.nan, low), np.where(none, np.nan, high)


def _log_if_positive(ax: Axes, values: np.ndarray) -> None:
    """A log y axis when the values are positive and span at least a decade (within one
    decade a log axis only has unreadable minor-tick labels like 4x10^-1)."""
    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all() and finite.max() >= 10 * finite.min():
        ax.set_yscale("log")
        tidy_log_ticks(ax)


# Which probe outputs share a panel, with the panel's y label (units).
_PROBE_PANELS = (
    (("inst_gap", "avg_gap", "exp_gap"), "convexity gap (loss units; <= 0 where convex)"),
    (("ref_gap", "avg_ref_gap", "exp_ref_gap"), "gap against x* (loss units; <= 0 if convex)"),
    (("inst_smooth", "max_smooth", "exp_smooth", "sharpness"), "smoothness / sharpness (1/step)"),
    (("precond_sharpness",), "preconditioned sharpness (Adam)"),
    (("eig_top1", "eig_top2", "eig_top3", "eig_min"), "Hessian eigenvalues (top-k, most negative)"),
    (("hess_trace",), "Hessian trace (Hutchinson)"),
    (("cum_update_corr", "cum_loss_diff", "cum_rs_corr"), "cumulative sums (loss units)"),
    (("update_corr", "loss_diff", "rs_corr"), "per step (loss units)"),
    (("convexity_ratio",), "convexity ratio (>= 1 if convex)"),
    (("full_grad_norm", "grad_noise"), "gradient norm (global l2)"),
    (("grad_cos",), "cos(g_t, g_{t-1})"),
    (("param_norm",), "||x_t|| (global l2)"),
)


_SPARSE = ("sharpness", "precond_sharpness", "eig_top1", "eig_top2", "eig_top3", "eig_min",
           "hess_trace")  # fmt: skip


def probe_figure(result: TrainResult) -> Figure | None:
    """One panel per group of probe outputs over steps; lines per optimizer (mean over seeds,
    band min-max over seeds), line style per output. Sharpness is drawn beside 2/lr."""
    def measured(name: str) -> bool:  # e.g. precond_sharpness is all NaN without Adam
        return name in result.probes and bool(np.isfinite(result.probes[name]).any())

    panels = [(names, ylabel) for names, ylabel in _PROBE_PANELS
              if any(measured(n) for n in names)]  # fmt: skip
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(_PANEL[0] * cols, _PANEL[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    styles = ("-", "--", ":", "-.")
    for ax, (names, ylabel) in zip(axes, panels, strict=False):
        present = [n for n in names if measured(n)]
        for j, name in enumerate(present):
            steps, values = _window_mean(result.steps, result.probes[name])
            sparse = name in _SPARSE  # measured every k steps: markers, not a line
            for i, opt in enumerate(result.optimizers):
                mean, low, high = _seed_band(values[i])
                ok = np.isfinite(mean)
                if not ok.any():
                    continue
                label = f"{name}: {plain_text(opt)}" if len(result.optimizers) > 1 else name
                style = ("o", "s", "^", "v")[j % 4] if sparse else styles[j % 4]
                ax.plot(steps[ok], mean[ok], style, color=f"C{i % 10}", label=label,
                        linewidth=1.3, markersize=4)  # fmt: skip
                if len(result.seeds) > 1 and not sparse:
                    ax.fill_between(steps[ok], low[ok], high[ok], color=f"C{i % 10}",
                                    alpha=0.15, linewidth=0)  # fmt: skip
            if name in ("sharpness", "precond_sharpness") and "sharpness_lr" in result.probes:
                _stability_edges(ax, result, name)
        if names == ("precond_sharpness",):  # Adam's first steps sit orders of magnitude up
            _log_if_positive(ax, result.probes["precond_sharpness"])
        ax.set_ylabel(ylabel)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("trajectory probes (mean over seeds, band: min-max over seeds)")
    return fig


def smoothness_figure(result: TrainResult) -> Figure | None:
    """Smoothness against sharpness at the steps sharpness was measured: inst_smooth (left) and
    exp_smooth (right) per (optimizer, seed) point, with y = x. On the line, the smoothness the
    step saw is the top curvature of the full-batch loss (the study's "smoothness tracks
    sharpness")."""
    needed = ("sharpness", "inst_smooth", "exp_smooth")
    if not all(k in result.probes for k in needed):
        return None
    sharp = result.probes["sharpness"]
    if not np.isfinite(sharp).any():
        return None
    fig = Figure(figsize=(_PANEL[0] * 2, _PANEL[1]), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("inst_smooth", "exp_smooth"), strict=True):
        smooth = result.probes[name]
        ok_all = np.isfinite(sharp) & np.isfinite(smooth) & (sharp > 0) & (smooth > 0)
        if not ok_all.any():
            ax.set_visible(False)
            continue
        for i, opt in enumerate(result.optimizers):
            ok = ok_all[i]
            ax.plot(sharp[i][ok], smooth[i][ok], "o", color=f"C{i % 10}", markersize=3,
                    alpha=0.7, label=plain_text(opt))  # fmt: skip
        lo = min(sharp[ok_all].min(), smooth[ok_all].min())
        hi = max(sharp[ok_all].max(), smooth[ok_all].max())
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sharpness (top Hessian eigenvalue of F)")
        ax.set_ylabel(f"{name} (1/step)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    fig.suptitle("smoothness against sharpness at the steps sharpness was measured "
                 "(a dot per optimizer, seed and measurement)")  # fmt: skip
    return fig


def _window_mean(steps: np.ndarray, values: np.ndarray, points: int = 200):
    """Per-step series averaged over consecutive windows (NaN-aware) so about ``points``
    remain; the window's last step labels it."""
    n = values.shape[-1]
    window = max(1, n // points)
    m = n // window * window
    shaped = values[..., n - m :].reshape(*values.shape[:-1], -1, window)
    finite = np.isfinite(shaped)
    count = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, shaped, 0.0).sum(axis=-1) / count
    return np.asarray(steps)[n - m :][window - 1 :: window], np.where(count > 0, mean, np.nan)


def _stability_edges(ax: Axes, result: TrainResult, output: str) -> None:
    """Each optimizer's edge of stability c / lr beside the ``output`` it bounds: 2/lr for SGD,
    (2 + 2 beta)/lr for heavy-ball and PyTorch momentum, (2 + 2 beta)/((1 - beta) lr) for the EMA
    form (the sharpness), (2 + 2 b1)/((1 - b1) lr) for Adam (the preconditioned sharpness)."""
    lr = result.probes["sharpness_lr"]
    for i, opt in enumerate(result.optimizers):
        edge = stability_edge(opt)
        if edge is None or edge[0] != output:
            continue
        _, factor, text = edge
        finite = np.isfinite(lr[i])
        count = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, lr[i], 0.0).sum(axis=0) / count
        ok = (count > 0) & (mean > 0)
        if ok.any():
            ax.plot(result.steps[ok], factor / mean[ok], ":", color=f"C{i % 10}", linewidth=1.2,
                    label=f"{text}: {plain_text(opt)}")  # fmt: skip


def stability_edge(optimizer: str) -> tuple[str, float, str] | None:
    """``(probe output, c, formula)``: the optimizer's edge of stability is c / lr on that output
    (quadratic model of the loss), or None when it has no known one.

    >>> stability_edge("momentum(lr=0.1, beta=0.9)")
    ('sharpness', 3.8, '(2 + 2 beta) / lr')
    >>> stability_edge("adam(lr=1e-3)")[1:]
    (38.00000000000001, '(2 + 2 b1) / ((1 - b1) lr)')
    """
    try:
        spec = resolve(optimizer)
    except Exception:  # a spec from another session's registry: no edge drawn
        return None
    name, values = spec.name, getattr(spec, "values", {})
    if name == "sgd":
        return "sharpness", 2.0, "2 / lr"
    if name == "momentum":
        beta = float(values["beta"])
        if values.get("form") == "ema":
            return "sharpness", (2 + 2 * beta) / (1 - beta), "(2 + 2 beta) / ((1 - beta) lr)"
        return "sharpness", 2 + 2 * beta, "(2 + 2 beta) / lr"
    if name in ("adam", "adamw"):
        b1 = float(values["b1"])
        return "precond_sharpness", (2 + 2 * b1) / (1 - b1), "(2 + 2 b1) / ((1 - b1) lr)"
    return None
