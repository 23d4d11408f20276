"""Ctrl-C before training: the start-up handler ends the process even inside a gc callback."""

import subprocess
import sys

import pytest

# A SIGINT raised from inside a garbage-collector callback, the way one lands in JAX's
# `_xla_gc_callback` during its import: a KeyboardInterrupt there is printed and dropped.
CODE = """
import gc, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from optimorph import startup
installed = {install}
if installed:
    assert startup.install()
def callback(phase, info):
    if phase == "start":
        gc.callbacks.remove(callback)
        signal.raise_signal(signal.SIGINT)
gc.callbacks.append(callback)
gc.collect()
print("survived", flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_sigint_inside_a_gc_callback_ends_the_process():
    run = subprocess.run([sys.executable, "-c", CODE.format(install=True)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert (run.returncode, run.stdout, run.stderr) == (130, "", "optimorph: interrupted\n")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_without_it_the_interrupt_is_dropped():
    """What the start-up handler is for: Python's own handler loses this interrupt."""
    run = subprocess.run([sys.executable, "-c", CODE.format(install=False)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0 and run.stdout == "survived\n"
    assert "Exception ignored" in run.stderr and "KeyboardInterrupt" in run.stderr


def test_only_in_place_of_pythons_default_handler():
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from optimorph import startup\n"
        "print(startup.install(), signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout == "False True\n", run.stderr
