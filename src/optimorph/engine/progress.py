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
        self.base = (self.start, 0)  # (time, done) the rate counts from: after the warm-up
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def advance(self, n: int, note: str = "", *, warmup: bool = False) -> None:
        """Count ``n`` more units. ``warmup``: this work carried a one-off cost (compilation),
        so the rate and the time left count from the end of it (an ETA of minutes for a run that
        ends two seconds later was compilation time spread over the whole run)."""
        self.done = min(self.done + int(n), self.total)
        now = time.perf_counter()
        if warmup:
            self.base = (now, self.done)
        if not self.enabled:
            return
        finished = self.done >= self.total
        if not (self.tty or finished or now - self.last_print >= self.every_s):
            return
        self.last_print = now
        elapsed = now - self.start
        since, done_then = self.base
        if self.done > done_then and now > since:  # steady rate, after the warm-up
            rate = (self.done - done_then) / (now - since)
        else:
            rate = self.done / elapsed if elapsed > 0 and not warmup else 0.0
        parts = [f"{self.label} {self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"]
        if rate > 0:
            parts.append(f"{_si(rate)} {self.unit}/s,")
        parts.append(f"{elapsed:.0f}s elapsed" + ("" if finished or rate <= 0 else ","))
        if rate > 0 and not finished:
            parts.append(f"~{(self.total - self.done) / rate:.0f}s left")
        line = " ".join(parts + [note]).strip()
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
