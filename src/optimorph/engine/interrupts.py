"""Ctrl-C at a safe point: during training an interrupt takes effect between compiled chunks.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be. Inside JAX's
dispatch, a ``__del__`` or a file write that can go wrong: an exception raised in a ``__del__``
is printed and dropped, so the run went on as if nothing had happened (seen as a process that
ignored Ctrl-C for minutes). Within :func:`deferred` the first SIGINT only records the request
and the trainer acts on it at the end of the chunk it is running (:func:`raise_if_requested`),
after writing a checkpoint. A second SIGINT raises at once; the request stays recorded until
the block is left, so a second one raised inside a ``__del__`` (and dropped there) still stops
the run at the end of the chunk.

Only the main thread can install signal handlers; elsewhere, or when someone else installed a
SIGINT handler (not Python's default, nor the console script's start-up one of
:mod:`optimorph.startup`), :func:`deferred` changes nothing. On leaving, Python's default handler
is back: start-up is over.

>>> with deferred():
...     raise_if_requested()  # nothing pending: returns
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from optimorph import startup

__all__ = ["deferred", "raise_if_requested", "requested"]

_pending = threading.Event()
_MESSAGE = (
    b"\noptimorph: interrupt received; stopping at the end of this chunk after a checkpoint "
    b"(Ctrl-C again to stop at once)\n"
)


def _handler(signum, frame) -> None:
    if _pending.is_set():
        raise KeyboardInterrupt  # still pending: if a __del__ drops this, the chunk's end stops
    _pending.set()
    os.write(2, _MESSAGE)  # not print(): the main thread may be inside a write to stderr


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: the first SIGINT is recorded, not raised (see the module docstring). On leaving,
    a request not yet acted on raises ``KeyboardInterrupt``."""
    if (
        threading.current_thread() is not threading.main_thread()
        or not startup.replaceable(signal.getsignal(signal.SIGINT))
    ):
        yield
        return
    _pending.clear()
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    except BaseException:
        _pending.clear()  # acted on: the exception (a second Ctrl-C's, say) is on its way out
        raise
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    raise_if_requested()


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Within: a SIGINT raises ``KeyboardInterrupt`` even where the start-up handler would end
    the process at once (``os._exit`` skips every ``finally``). For code with something to undo
    on the way out: :func:`optimorph.engine.parallel.map_cells` stops its worker processes, which
    a parent ended by ``os._exit`` would leave computing. The handler found is put back after."""
    previous = signal.getsignal(signal.SIGINT)
    if (
        threading.current_thread() is not threading.main_thread()
        or previous is signal.default_int_handler
        or not startup.replaceable(previous)
    ):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def requested() -> bool:
    """Whether an interrupt is waiting for the next safe point."""
    return _pending.is_set()


def raise_if_requested() -> None:
    """Raise the waiting ``KeyboardInterrupt`` (call at a safe point), else return."""
    if _pending.is_set():
        _pending.clear()
        raise KeyboardInterrupt
