"""Figures as a reader sees them on the report page: no wider than the page's text column, tick
labels that do not run into each other, a style per series past ten series, legends on no data,
and the Hessian's per-layer panel with room above its top line."""

import itertools

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from optimorph.engine.result import TrainResult
from optimorph.report.curves import eval_figure, final_metrics_figure, grid_figure, loss_figure
from optimorph.report.equivalence_figures import divergence_grid
from optimorph.report.figures import DPI
from optimorph.report.hessian_figures import hessian_figure
from optimorph.report.style import MAX_WIDTH, plain_number

GRID = [f"adam(lr={lr:g})" for lr in (1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1)]
OTHERS = ["sgd(lr=0.03)", "sgd(lr=0.3)", "sgd(lr=1)",
          "momentum(lr=power_law(0.05, tau=5e4, alpha=1), beta=0.9, form='pytorch')"]  # fmt: skip


@pytest.fixture(scope="module")
def wide():
    """Eleven optimizers (a grid of seven among them), two seeds, losses over a decade."""
    optimizers = GRID + OTHERS
    rng = np.random.default_rng(0)
    steps, eval_steps = np.arange(1, 301), np.arange(0, 301, 30)
    o = len(optimizers)
    rate = np.linspace(0.5, 3.0, o)[:, None, None]
    loss = 0.3 + 0.5 * np.exp(-rate * steps / 300) * rng.lognormal(0, 0.05, (o, 2, steps.size))
    evals = {k: 0.25 + 0.5 * np.exp(-rate * eval_steps / 300) + rng.normal(0, 0.01, (o, 2, 11))
             for k in ("train/loss", "test/loss", "test_noisy/loss")}  # fmt: skip
    evals["test/accuracy"] = 1 - evals["test/loss"] / 2
    grid = {"spec": "adam(lr=logspace(1e-4, 1e-1, 7))", "members": GRID,
            "axes": {"lr": [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 0.1]}}  # fmt: skip
    return TrainResult(optimizers=optimizers, seeds=[0, 1], steps=steps, train_loss=loss,
                       eval_steps=eval_steps, evals=evals, diverged_at=np.full((o, 2), -1),
                       config={"optimizers": optimizers, "grids": [grid]})  # fmt: skip


def _drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def _overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    renderer = _drawn(fig)
    found = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            # Minor labels too: matplotlib labels the minor ticks of a short log axis.
            ticks = [*zip(axis.get_majorticklocs(), axis.get_majorticklabels()),
                     *zip(axis.get_minorticklocs(), axis.get_minorticklabels())]  # fmt: skip
            labels = [t for loc, t in ticks
                      if low <= loc <= high and t.get_visible() and t.get_text()]  # fmt: skip
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
            for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
                if box_a.overlaps(box_b):
                    found.append((a, b))
    return found


@pytest.mark.parametrize("draw", [loss_figure, eval_figure, final_metrics_figure, grid_figure])
def test_run_figures_fit_the_page_and_their_ticks_do_not_collide(draw, wide):
    fig = draw(wide)
    assert fig.get_figwidth() <= MAX_WIDTH and fig.get_figwidth() * DPI <= 1200
    assert _overlapping_tick_labels(fig) == []
    # Legends go above the panels, never over the data of one.
    assert all(ax.get_legend() is None for ax in fig.axes)


def test_eleven_curves_have_eleven_styles_and_one_legend_above(wide):
    fig = loss_figure(wide)
    styles = [(line.get_color(), line.get_linestyle()) for line in fig.axes[0].lines]
    assert len(styles) == len(wide.optimizers) == len(set(styles))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == wide.optimizers


def test_short_log_axes_are_labelled_with_plain_numbers():
    t = np.arange(3, 61, dtype=float)
    d = np.outer([1.0, 1.1], t**0.5) * 1e-3
    panels = [{"pair": "A: sgd\nB: signsgd", "precision": p, "t": t, "d": d, "floor_a": d / 50,
               "floor_b": d / 40} for p in ("fp16", "fp32", "fp64")]  # fmt: skip
    fig = divergence_grid(panels)
    assert fig.get_figwidth() <= MAX_WIDTH
    assert _overlapping_tick_labels(fig) == []
    ticks = [t.get_text() for t in fig.axes[0].xaxis.get_majorticklabels() if t.get_visible()]
    assert "10" in ticks and not any("times" in x or "^" in x for x in ticks), ticks
    assert [plain_number(x) for x in (3.0, 0.05, 2e-5)] == ["3", "0.05", "2e-5"]


def test_the_hessian_layer_panel_has_room_above_its_top_line_and_no_legend_on_it():
    entries = [{"optimizer": name, "seed": 0, "top": [top, 1.0], "bottom": [-0.1, 0.0],
                "trace": 3.0, "trace_se": 0.1, "layers": {"dense0": top * 0.9, "dense1": 1.0},
                "density": {"grid": [-1.0, 0.0, 1.0, top], "values": [0.1, 0.5, 0.3, 0.1]}}
               for name, top in (("sgd(lr=0.1)", 5.0), ("adam(lr=1e-3)", 3.0))]  # fmt: skip
    fig = hessian_figure({"examples": 8, "entries": entries})
    _drawn(fig)
    layers = fig.axes[1]
    assert layers.get_ylim()[1] > 5.0 * 1.04
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert fig.get_figwidth() <= MAX_WIDTH
