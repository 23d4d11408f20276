"""The standard figures of a run directory, drawn from a result or redrawn from stored files."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from optimorph.engine.result import TrainResult
from optimorph.report.curves import (
    eval_figure,
    final_metrics_figure,
    grid_figure,
    loss_figure,
    probe_figure,
    smoothness_figure,
)
from optimorph.report.hessian_figures import hessian_figure
from optimorph.atomic import atomic_path
from optimorph.results.rundir import read_hessian, read_run

__all__ = ["DPI", "save_figure", "save_figures", "save_hessian_figure", "redraw"]

DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def save_figures(result: TrainResult, run_dir: str | os.PathLike) -> list[Path]:
    """Draw the standard figures of ``result`` into ``run_dir``.

    Writes ``loss_curves.png``, ``eval_curves.png`` (when there are evaluations),
    ``final_metrics.png``, ``probes.png`` (with probes), ``smoothness_vs_sharpness.png`` (with
    the smooth and sharpness probes) and ``grids.png`` (with a hyperparameter grid).

    Returns:
      The paths written.
    """
    run_dir = Path(run_dir)
    figures = {"loss_curves.png": loss_figure(result)}
    if result.evals:
        figures["eval_curves.png"] = eval_figure(result)
    figures["final_metrics.png"] = final_metrics_figure(result)
    drawn = (("probes.png", probe_figure(result)), ("grids.png", grid_figure(result)),
             ("smoothness_vs_sharpness.png", smoothness_figure(result)))  # fmt: skip
    for name, fig in drawn:
        if fig is not None:
            figures[name] = fig
    return [save_figure(fig, run_dir / name) for name, fig in figures.items()]


def save_hessian_figure(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None
) -> Path | None:
    """Draw ``hessian.png`` from the run's ``hessian.json`` (None when it has none) into
    ``out_dir`` (default: the run directory)."""
    doc = read_hessian(run_dir)
    fig = hessian_figure(doc) if doc is not None else None
    out = Path(run_dir if out_dir is None else out_dir)
    return save_figure(fig, out / "hessian.png") if fig is not None else None


def redraw(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Redraw the standard figures of a run directory from its stored results, without training
    (and ``hessian.png`` when the run has a ``hessian.json``), into ``out_dir`` (default: the
    run directory; another one draws a run that cannot be written).

    Returns:
      The paths written.
    """
    out = Path(run_dir if out_dir is None else out_dir)
    paths = save_figures(read_run(run_dir), out)
    hessian = save_hessian_figure(run_dir, out)
    return paths + ([hessian] if hessian is not None else [])
