"""Test configuration: float64 available, strict rank promotion, warnings as errors (pyproject).

The suite's time is mostly XLA compiling hundreds of small programs, so tests (and the
processes they start, which inherit the environment) compile with LLVM's optimizer off and share
one persistent compilation cache per session. The cache changes no result; the optimizer level
does in the last bits: at level 0 LLVM does not fuse float32 ``a * b + c`` into one rounding,
which it does by default (docs/architecture.md). Tests assert properties that hold either way;
benchmarks and real runs use the defaults. As the command does, fp16 rounds after each operation
on every x86 CPU (``optimorph.cpu.per_operation_fp16``).
"""

import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = f"{_flags} --xla_backend_optimization_level=0".strip()
from optimorph.cpu import per_operation_fp16  # noqa: E402  (before JAX starts its backends)

per_operation_fp16()
_cache = os.path.join(tempfile.gettempdir(), "optimorph-test-jax-cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def check_page(tmp_path):
    """``check_page(page)``: open a report in headless Chromium (tests/browser.py)."""
    import browser

    return lambda page: browser.check_page(page, tmp_path)


@pytest.fixture
def interrupt_at_checkpoint(monkeypatch):
    """``interrupt_at_checkpoint(n)``: the trainer's n-th checkpoint from now is written, then
    a KeyboardInterrupt is raised (a Ctrl-C right after it); returns the function that stops
    interrupting (call it before resuming)."""
    from optimorph.engine import trainer

    original = trainer._save_checkpoint

    def arm(n: int):
        saved = []

        def save_then_interrupt(*args):
            original(*args)
            saved.append(1)
            if len(saved) == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(trainer, "_save_checkpoint", save_then_interrupt)
        return lambda: monkeypatch.setattr(trainer, "_save_checkpoint", original)

    return arm


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "heavy: a test of a minute or more; runs first, so no worker idles at the end"
    )


def pytest_collection_modifyitems(items):
    """Heavy tests first (stable otherwise): with two workers, a long test collected last keeps
    one worker busy while the other has nothing left to do."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
