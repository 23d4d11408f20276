"""Where a long run's time went: wall seconds per named phase, and the XLA compilation inside it.

A :class:`Phases` object times ``with phases("train"): ...`` blocks; compilation is counted from
JAX's own monitoring events (tracing, lowering and backend compilation of every jitted program),
so a phase's time splits into compiling and running without touching the code it runs. Phases
measured in worker processes come back as plain dicts (:meth:`Phases.as_dict`) and add up with
:meth:`Phases.add`.

>>> phases = Phases()
>>> with phases("figures"):
...     pass
>>> sorted(phases.as_dict())
['figures']
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping

__all__ = ["Phases", "compile_seconds"]

# JAX's duration events of compiling one program (jax/_src/dispatch.py): the three together are
# what a cold call of a jitted function spends before it runs.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compiled = [0.0]  # seconds of compilation in this process so far
_lock = threading.Lock()
_listening = [False]


def _listen() -> None:
    """Register the compile-time listener once per process (JAX keeps listeners for good)."""
    with _lock:
        if _listening[0]:
            return
        import jax

        def on_event(event: str, duration: float, **_: object) -> None:
            if event in _COMPILE_EVENTS:
                with _lock:  # devices compile at the same time, one thread each
                    _compiled[0] += float(duration)

        jax.monitoring.register_event_duration_secs_listener(on_event)
        _listening[0] = True


def compile_seconds() -> float:
    """Seconds this process has spent compiling JAX programs since timing started."""
    _listen()
    return _compiled[0]


class Phases:
    """Wall and compile seconds per phase name (a phase entered twice adds up)."""

    def __init__(self) -> None:
        _listen()
        self.wall: dict[str, float] = {}
        self.compile: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), compile_seconds()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
            self.compile[name] = self.compile.get(name, 0.0) + compile_seconds() - c0

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{phase: {"wall_s": ..., "compile_s": ...}}`` (JSON, and across processes)."""
        return {k: {"wall_s": self.wall[k], "compile_s": self.compile.get(k, 0.0)}
                for k in self.wall}  # fmt: skip

    def add(self, other: Mapping[str, Mapping[str, float]]) -> None:
        """Add the phases another process measured (:meth:`as_dict`)."""
        for k, v in other.items():
            self.wall[k] = self.wall.get(k, 0.0) + float(v["wall_s"])
            self.compile[k] = self.compile.get(k, 0.0) + float(v["compile_s"])

    def summary(self, total_wall: float | None = None) -> str:
        """One line: ``train 120 s (compile 30 s), pairs 90 s (compile 60 s); 200 s wall``."""
        parts = [f"{k} {self.wall[k]:.0f} s (compile {self.compile.get(k, 0.0):.0f} s)"
                 for k in self.wall]  # fmt: skip
        tail = f"; {total_wall:.0f} s wall" if total_wall is not None else ""
        return ", ".join(parts) + tail
