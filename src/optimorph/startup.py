"""Ctrl-C before training starts: the process ends at once, exit status 130, one line on stderr.

Raising ``KeyboardInterrupt`` is not enough while JAX imports: Python runs the signal handler
wherever the main thread is, and during the import that is often JAX's garbage-collector callback
(``_xla_gc_callback``), where an exception is printed as "Exception ignored in ..." and dropped
(an outside tester saw the run then train to its end), or an extension's initialiser, where it
comes out as an ``ImportError``. Before training there is nothing to save, so the console script
installs :func:`install`'s handler first thing: it raises nothing, it writes its line with
``os.write`` (the main thread may be inside a write to stderr) and ends the process with
``os._exit``, which works wherever the main thread is. Training takes SIGINT over
(:func:`optimorph.engine.interrupts.deferred`, which accepts this handler as it accepts Python's
default) and hands back Python's default when it ends.

The command and its worker processes also show a precision warning as one line
(:func:`warning_printer`).

A leaf module that imports nothing heavy: it is in place before JAX starts importing.

>>> import signal
>>> replaceable(signal.default_int_handler), replaceable(signal.SIG_IGN)
(True, False)
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["EXIT_STATUS", "install", "replaceable", "warning_printer"]

EXIT_STATUS = 128 + signal.SIGINT  # 130, what a shell reports for a job ended by Ctrl-C
_MESSAGE = b"optimorph: interrupted\n"


def _exit_now(signum, frame) -> None:
    os.write(2, _MESSAGE)
    os._exit(EXIT_STATUS)


def install() -> bool:
    """Make a SIGINT end the process at once (exit 130, one line) until training takes it over.

    Only from the main thread and in place of Python's default handler: a process that ignores
    SIGINT (a job started in the background) or installed its own handler keeps it.

    Returns:
      Whether the handler was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, _exit_now)
    return True


def replaceable(handler) -> bool:
    """Whether a SIGINT ``handler`` may be replaced by training's own: Python's default one, or
    the start-up one of :func:`install`."""
    return handler is signal.default_int_handler or handler is _exit_now


def warning_printer(show_other):
    """``warnings.showwarning`` for optimorph's processes (the command and its workers): a
    ``PrecisionWarning`` as one line ``optimorph: warning: ...``, each message once (the trainer
    and the simulation defect both check a spec's hyperparameters), without the source line;
    other warnings go to ``show_other``. Only the display changes: a filter that turns warnings
    into errors (the tests' ``filterwarnings = error``) still raises before anything is shown."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        from optimorph.precision import PrecisionWarning  # imported by whatever warned

        if not issubclass(category, PrecisionWarning):
            return show_other(message, category, filename, lineno, file, line)
        text = str(message)
        if text not in seen:
            seen.add(text)
            print(f"optimorph: warning: {text}", file=file or sys.stderr)

    return show
