"""How every figure reads on the report page: its width, series styles, log ticks, legends.

One place for what a reader at 1280 px needs: a figure at most ``MAX_WIDTH`` inches wide (shown
at its own size in the page's 1200 px text column, so its text keeps the size it was drawn at),
a style per series that stays distinct past ten series, log-axis ticks that do not overlap, and
legends that cover no data.

>>> [series_style(i)["linestyle"] for i in (0, 9, 10)]
['-', '-', '--']
>>> plain_number(2e-05), plain_number(300.0)
('2e-5', '300')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

__all__ = [
    "MAX_WIDTH",
    "series_style",
    "series_marker",
    "plain_number",
    "short_number",
    "tidy_log_ticks",
    "legend_above",
    "legend_height",
    "figure_title",
]

MAX_WIDTH = 10.0
"""Inches: 1200 px at the report's 120 dpi, the width of the page's text column."""

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")


def series_style(i: int) -> dict[str, str]:
    """Colour and line style of series ``i``: ten colours, then the same ten dashed, dotted,
    dash-dotted (so the eleventh series is not the first one again)."""
    return {"color": f"C{i % 10}", "linestyle": _LINESTYLES[(i // 10) % len(_LINESTYLES)]}


def series_marker(i: int) -> str:
    """The marker of series ``i`` in a scatter plot (circles, then squares, ... per ten)."""
    return _MARKERS[(i // 10) % len(_MARKERS)]


def plain_number(value: float) -> str:
    """A tick label as a plain number: 0.05, 300, 2e-5 (never 5x10^-2)."""
    text = f"{value:g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def short_number(x: float) -> str:
    """A label for a narrow column or tick: 3 significant digits below 1000, else one or two
    as 2.7e3 (the phase diagram's heterogeneity columns, in text and in figures)."""
    if x < 1000:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def tidy_log_ticks(ax: Axes) -> None:
    """Readable ticks on the log axes of ``ax``, decided from its limits and its length: the
    densest of 1-9, 1-2-5, 1-3 or 1 x 10^k that leaves room for each label, as plain numbers
    between 0.001 and 10^4 (powers of ten outside), minor ticks unlabelled. Call it once the
    data are drawn.

    matplotlib's default labels the minor ticks of a short log axis, and on a panel of a few
    inches "3x10^1 4x10^1 6x10^1" run into each other.
    """
    box = ax.get_window_extent()  # pixels, as laid out so far (in a subfigure too)
    for axis, (low, high), inches in (
        (ax.xaxis, ax.get_xlim(), box.width / ax.figure.dpi),
        (ax.yaxis, ax.get_ylim(), box.height / ax.figure.dpi),
    ):
        if axis.get_scale() != "log":
            continue
        low, high = sorted((low, high))
        if not (low > 0 and math.isfinite(high)):
            continue
        room = max(3, int(inches * (1.6 if axis is ax.xaxis else 2.5)))
        axis.set_minor_formatter(NullFormatter())
        if math.log10(high / low) > MINOR_TICK_DECADES:
            # Eight unlabelled marks per decade over many decades say nothing a reader uses,
            # and drawing them was most of a large grid's time (20 s -> 7 s for 45 panels).
            axis.set_minor_locator(NullLocator())
        for subs in _SUBS:
            if _count_ticks(low, high, subs) <= room:
                break
        else:
            axis.set_major_locator(LogLocator(base=10, numticks=room))
            continue
        axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=room + 2))
        if low >= 1e-3 * 0.99 and high <= 1e4 * 1.01:
            axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))


MINOR_TICK_DECADES = 3  # log axes spanning more decades than this get no minor ticks
_SUBS = ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0), (1.0, 2.0, 5.0), (1.0, 3.0), (1.0,))


def _count_ticks(low: float, high: float, subs: Sequence[float]) -> int:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    return sum(low <= s * 10.0**k <= high for k in range(first, last + 1) for s in subs)


def legend_above(
    fig: Figure | SubFigure,
    handles: Sequence,
    labels: Sequence[str],
    *,
    width: float | None = None,
    fontsize: str = "small",
    title: str | None = None,
) -> None:
    """One legend for the whole figure, above its panels, in as many columns as its longest
    label allows: inside no panel (it would hide data) and inside the figure (a legend beside
    a panel runs off it when labels are long optimizer specs). ``title`` is the figure's title,
    drawn above the legend (see :func:`figure_title`)."""
    if not handles:
        if title:
            fig.suptitle(title)
        return
    width = width if width is not None else fig.figure.get_figwidth()
    ncols = _legend_columns(labels, width)
    fig.legend(handles, labels, loc="outside upper center", ncols=ncols, fontsize=fontsize,
               frameon=False)  # fmt: skip
    if title:
        figure_title(fig, title)


def figure_title(fig: Figure | SubFigure, title: str) -> None:
    """Title ``fig``: as the title of its :func:`legend_above` legend when it has one, else as
    its suptitle. (matplotlib's constrained layout puts a suptitle and a legend outside the top
    of the panels in the same place, one over the other.)"""
    if fig.legends:
        fig.legends[0].set_title(title, prop={"size": "large"})
    else:
        fig.suptitle(title)


def legend_height(labels: Sequence[str], width: float) -> float:
    """Inches that :func:`legend_above` takes at the top of a figure ``width`` inches wide (add
    it to the figure's height so that the panels keep theirs)."""
    if not labels:
        return 0.0
    return 0.2 + 0.2 * math.ceil(len(labels) / _legend_columns(labels, width))


def _legend_columns(labels: Sequence[str], width: float) -> int:
    # About 0.065 inch per character at "small" (8.3 pt), and 0.7 inch for the handle and gap.
    per_column = 0.065 * max(len(label) for label in labels) + 0.7
    return max(1, min(len(labels), int(width // per_column)))
