"""Equivalence figures: real PNGs and GIFs, drawn values that match the inputs, atomic writes."""

import numpy as np
import pytest
from matplotlib.animation import PillowWriter
from PIL import Image

from optimorph.report.equivalence_figures import (
    MAX_FRAMES,
    divergence_figure,
    divergence_grid,
    phase_diagram_figure,
    tracking_animation,
)
from optimorph.report.figures import save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = np.arange(0, 101)  # step 0 included: it must be left off the log axis, not break it


def _divergence_inputs(seeds=4, zero_until=0):
    rng = np.random.default_rng(0)
    shape = (seeds, T.size)
    floor_a = 1e-7 * (T + 1) * rng.lognormal(0.0, 0.2, shape)
    floor_b = 2e-7 * (T + 1) * rng.lognormal(0.0, 0.2, shape)
    d = 1e-8 * (T + 1) ** 1.5 * rng.lognormal(0.0, 0.2, shape)
    d[:, :zero_until] = 0.0
    return d, floor_a, floor_b


def _assert_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


def test_divergence_figure_png(tmp_path):
    d, fa, fb = _divergence_inputs(zero_until=5)
    fig = divergence_figure(T, d, fa, fb, title="adam vs signsgd @ fp32", labels=("adam", "$gd"))
    _assert_png(save_figure(fig, tmp_path / "divergence.png"))
    ax_d, ax_r = fig.axes
    assert ax_d.get_xscale() == ax_d.get_yscale() == ax_r.get_yscale() == "log"
    # The dashed threshold is C times the median over seeds of max(floor_a, floor_b), at t > 0.
    (threshold,) = [line for line in ax_d.lines if line.get_linestyle() == "--"]
    expected = 10.0 * np.median(np.maximum(fa, fb), axis=0)[1:]
    np.testing.assert_allclose(threshold.get_ydata(), expected)
    np.testing.assert_array_equal(threshold.get_xdata(), T[1:])
    # The ratio panel has its horizontal line at C.
    assert any(list(line.get_ydata()) == [10.0, 10.0] for line in ax_r.lines)
    # The zeros are reported, not silently dropped.
    assert any("d = 0 at 20 of" in text.get_text() for text in ax_d.texts)


def test_divergence_figure_identical_trajectories_draw_without_warnings(tmp_path):
    d, fa, fb = _divergence_inputs()
    fig = divergence_figure(T, np.zeros_like(d), fa, fb, title="identical", ratio_c=3.0)
    _assert_png(save_figure(fig, tmp_path / "identical.png"))
    assert any("nothing positive" in text.get_text() for text in fig.axes[1].texts)


def test_divergence_figure_reports_first_non_finite_step():
    d, fa, fb = _divergence_inputs()
    d[2, 40:] = np.nan  # one pair of runs diverged apart at step 40
    fa[:, 0] = fb[:, 0] = 0.0  # no noise before the first step: the ratio is d / 0 there
    fig = divergence_figure(T, d, fa, fb, title="diverged")
    ax_d, ax_r = fig.axes
    assert any("first at step 40" in text.get_text() for text in ax_d.texts)
    assert any("ratio not finite" in text.get_text() for text in ax_r.texts)


def test_divergence_figure_shape_mismatch_raises():
    d, fa, fb = _divergence_inputs()
    with pytest.raises(ValueError, match=r"\[S, E\]"):
        divergence_figure(T, d, fa[:, :-1], fb, title="x")


def test_divergence_grid_png(tmp_path):
    d, fa, fb = _divergence_inputs()
    panels = [
        {"pair": pair, "precision": p, "t": T, "d": scale * d, "floor_a": fa, "floor_b": fb}
        for pair, scale in [("sgd vs signsgd", 1e3), ("adam vs signsgd", 1.0)]
        for p in ["fp16", "fp32", "fp64"]
    ][:-1]  # the last cell is missing and must say so
    for kind in ["distance", "ratio"]:
        fig = divergence_grid(panels, kind=kind)
        _assert_png(save_figure(fig, tmp_path / f"grid_{kind}.png"))
        # A pair's name once above its row, the precision on each panel, a y label per row.
        assert [row.get_suptitle() for row in fig.subfigs] == ["sgd vs signsgd", "adam vs signsgd"]
        assert fig.axes[0].get_title().startswith("fp16")
        assert fig.axes[4].get_title().startswith("fp32")
        assert not fig.axes[5].axison
        assert fig.axes[0].get_ylabel() and fig.axes[3].get_ylabel() and not fig.axes[1].get_ylabel()
        # One legend, above the panels, naming each curve once.
        (legend,) = fig.legends
        texts = [t.get_text() for t in legend.get_texts()]
        assert len(texts) == len(set(texts)) == (4 if kind == "distance" else 2)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p.pop("d"), "missing"),
        (lambda p: p.update(colour="red"), "unknown panel keys"),
    ],
)
def test_divergence_grid_bad_panels_raise(change, match):
    d, fa, fb = _divergence_inputs()
    panel = {"pair": "a-b", "precision": "fp16", "t": T, "d": d, "floor_a": fa, "floor_b": fb}
    change(panel)
    with pytest.raises(ValueError, match=match):
        divergence_grid([panel])
    with pytest.raises(ValueError, match="two panels"):
        divergence_grid(
            [{"pair": "a", "precision": "p", "t": T, "d": d, "floor_a": fa, "floor_b": fb}] * 2
        )


def test_phase_diagram_png(tmp_path):
    bits = np.arange(4, 53, 4)
    hetero = np.logspace(0, 4, 6)
    pairs = ["adam-signsgd", "sgd-signsgd", "sgd-sgd(1.001)"]
    eq = np.stack([(bits[:, None] < 8 + 8 * p) | (hetero[None, :] < 10.0**p) for p in range(3)])
    fig = phase_diagram_figure(bits, hetero, eq, pairs)
    _assert_png(save_figure(fig, tmp_path / "phase.png"))
    assert [ax.get_title() for ax in fig.axes[:4]] == [*pairs, "equivalent pairs (of 3)"]
    summary = fig.axes[3]
    np.testing.assert_array_equal(
        np.asarray(summary.collections[0].get_array()).reshape(eq.shape[1:]), eq.sum(axis=0)
    )
    assert summary.get_xscale() == "log"
    # One colour scale, darker = more different: "equivalent" on a pair's panel is the colour of
    # "every pair equivalent" on the summary, "not equivalent" the colour of "none", and darker.
    pair, total = fig.axes[0].collections[0], summary.collections[0]
    shade = lambda mesh, v: np.asarray(mesh.cmap(mesh.norm(v)))  # noqa: E731
    np.testing.assert_array_equal(shade(pair, 1.0), shade(total, 3))
    np.testing.assert_array_equal(shade(pair, 0.0), shade(total, 0))
    assert shade(pair, 0.0)[:3].sum() < shade(pair, 1.0)[:3].sum()
    labels = [ax.get_ylabel() for ax in fig.axes[len(pairs) + 1 :] if ax.get_ylabel()]
    assert any("darker" in label for label in labels) and len(labels) >= 2, labels
    # The native formats inside 4..52 bits are marked on a secondary y axis.
    right_labels = {
        label.get_text() for child in fig.axes[0].child_axes for label in child.get_yticklabels()
    }
    assert right_labels == {"bf16", "fp16", "fp32", "fp64"}


def test_phase_diagram_bad_shape_raises():
    with pytest.raises(ValueError, match="expected"):
        phase_diagram_figure([7, 10], [1.0, 10.0], np.zeros((2, 2, 3), bool), ["a", "b"])


def _walk(steps, dims=6, seed=0):
    rng = np.random.default_rng(seed)
    b = np.cumsum(rng.normal(size=(steps, dims)), axis=0)
    return b + rng.normal(0.0, 0.1, (steps, dims)), b


def test_tracking_animation_gif_is_capped(tmp_path):
    a, b = _walk(150)
    # A low dpi keeps the test fast; the frame count does not depend on it.
    path = tracking_animation(tmp_path / "track.gif", a, b, np.full(150, 0.3), fps=12, dpi=40)
    assert path.read_bytes()[:6] == b"GIF89a"
    with Image.open(path) as gif:
        assert gif.n_frames == MAX_FRAMES
    short = tracking_animation(tmp_path / "short.gif", *_walk(7, dims=1), None, dpi=40)
    with Image.open(short) as gif:
        assert gif.n_frames == 7


def test_tracking_animation_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    a, b = _walk(20)
    grab = PillowWriter.grab_frame
    calls = []

    def failing_grab(self, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        grab(self, **kwargs)

    monkeypatch.setattr(PillowWriter, "grab_frame", failing_grab)
    with pytest.raises(RuntimeError, match="interrupted"):
        tracking_animation(tmp_path / "track.gif", a, b, None)
    assert list(tmp_path.iterdir()) == []
    # An earlier file at the destination survives a failed rewrite untouched.
    (tmp_path / "track.gif").write_bytes(b"old")
    calls.clear()
    with pytest.raises(RuntimeError, match="interrupted"):
        tracking_animation(tmp_path / "track.gif", a, b, None)
    assert [p.name for p in tmp_path.iterdir()] == ["track.gif"]
    assert (tmp_path / "track.gif").read_bytes() == b"old"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"path": "track.png"}, "end in .gif"),
        ({"b_states": np.zeros((5, 3))}, "T, D"),
        ({"residual_radius": -np.ones(10)}, "nonnegative"),
        ({"max_frames": MAX_FRAMES + 1}, "max_frames"),
    ],
)
def test_tracking_animation_bad_input_raises(tmp_path, kwargs, match):
    a, b = _walk(10, dims=3)
    args = {
        "path": tmp_path / "track.gif",
        "phi_a_states": a,
        "b_states": b,
        "residual_radius": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tracking_animation(**args)
    assert list(tmp_path.iterdir()) == []
