"""The tiny sweep's file, and its store run once in this process (the reference the other ways
of running it are compared with)."""

import pytest
from sweep_helpers import TINY, digest

from optimorph.sweeps import load, run_sweep


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def reference(tiny_file, tmp_path_factory):
    """``(store, digest)`` of the tiny sweep run in this process, uninterrupted."""
    store = tmp_path_factory.mktemp("reference") / "store"
    report = run_sweep(load(tiny_file), store, progress=False)
    assert (report.done, report.written, report.failed) == (8, 8, {})
    return store, digest(store)
