"""A small progress line on stderr: steps done, rate and time left (no dependency needed)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Reports ``done/total`` work units between compiled chunks.

    On a terminal the line is redrawn in place; elsewhere (CI logs, files) a line is printed at most
    every ``every_s`` seconds and at the end, so logs stay short.
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = 10.0,
        unit: str = "steps",
    ):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.unit = unit
        self.start = time.perf_counter()
        self.last_print = -float("inf")
        self.done = 0
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def advance(self, n: int, note: str = "") -> None:
        self.done = min(self.done + int(n), self.total)
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        if not (self.tty or finished or now - self.last_print >= self.every_s):
            return
        self.last_print = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        line = (
            f"{self.label} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) "
            f"{_si(rate)} {self.unit}/s, {elapsed:.0f}s elapsed, ~{left:.0f}s left {note}"
        ).strip()
        end = "\n" if finished or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _si(x: float) -> str:
    """A rate, short: 72.0k, 12.3, and two significant digits below 1.

    >>> _si(72000), _si(12.34), _si(0.0095)
    ('72.0k', '12.3', '0.0095')
    """
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.1f}" if x >= 1 or x == 0 else f"{x:.2g}"  # slow work: not "0.0 spectra/s"
