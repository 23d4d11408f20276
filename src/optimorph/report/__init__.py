"""Figures and self-contained HTML reports, drawn from run directories."""

from optimorph.report.curves import eval_figure, final_metrics_figure, loss_figure
from optimorph.report.figures import redraw, save_figure, save_figures
from optimorph.report.html import write_report

__all__ = [
    "loss_figure",
    "eval_figure",
    "final_metrics_figure",
    "save_figure",
    "save_figures",
    "redraw",
    "write_report",
]
