"""Sweep cells on worker processes: same results as in-process, errors name the cell."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from optimorph.engine.parallel import map_cells


def _train_cell(batch):
    import optimorph

    r = optimorph.train("two-moons(n=64)", "sgd(lr=0.1)", steps=20, batch_size=batch,
                        precision="fp64", progress=False)  # fmt: skip
    return r.train_loss, os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _fail(x):
    raise ValueError("bad cell")


def _warn(x):
    import warnings

    from optimorph.precision import PrecisionWarning

    for _ in range(2):  # the trainer and the defect both check a spec: shown once
        warnings.warn("b2=0.999 is stored as 1.0 in bf16", PrecisionWarning, stacklevel=1)
    return x


def test_cells_on_two_processes_equal_in_process_runs_bit_for_bit():
    here = map_cells(_train_cell, [4, 8], workers=1)
    seen = []
    there = map_cells(_train_cell, [4, 8], workers=2, on_result=lambda i, r: seen.append(i))
    for (a, _), (b, affinity) in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)  # float64 carried into the workers
        if affinity is not None:
            assert len(affinity) == 1  # pinned to one core
    assert sorted(seen) == [0, 1]


def test_a_failing_cell_is_named():
    with pytest.raises(ValueError, match="bad cell") as info:
        map_cells(_fail, [1, 2], workers=2)
    assert any("in sweep cell" in note for note in info.value.__notes__)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        map_cells(abs, [1], workers=0)


def test_a_workers_precision_warning_is_one_line_without_source(capfd):
    assert map_cells(_warn, [1, 2], workers=2) == [1, 2]
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "stored as" in line]
    assert set(lines) == {"optimorph: warning: b2=0.999 is stored as 1.0 in bf16"}, err
    assert 1 <= len(lines) <= 2  # once per worker process
    assert "test_parallel.py" not in err and "warnings.warn" not in err


WAITER = '''
import os, sys, time
def wait(folder):
    open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
    time.sleep(120)
'''


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_an_interrupted_parent_stops_its_workers(tmp_path):
    """SIGINT to the parent alone (``kill -INT``, a job scheduler): a parent that trains nothing
    itself still has the start-up handler (``os._exit``), which would leave the workers
    computing; map_cells takes SIGINT over while it waits, so they are stopped."""
    (tmp_path / "waiter.py").write_text(WAITER)
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from optimorph import startup; startup.install()\n"
        "import waiter\n"
        "from optimorph.engine.parallel import map_cells\n"
        "try:\n"
        f"    map_cells(waiter.wait, [{str(tmp_path)!r}] * 2, workers=2)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    proc, pids = _start_waiting_workers(code, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a worker outlived its parent"


def _start_waiting_workers(code: str, folder) -> tuple[subprocess.Popen, list[int]]:
    """Start ``code`` (a parent running two WAITER workers) and wait until both have started."""
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(folder.glob("pid-*"))) < 2:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    pids = [int(p.name[4:]) for p in folder.glob("pid-*")]
    assert len(pids) == 2, "the workers did not start"
    return proc, pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not os.path.exists(f"/proc/{pid}/stat"):  # no /proc here: alive as far as we can tell
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) is not computing
        return f.read().split(") ")[-1][0] != "Z"


def test_workers_of_a_killed_parent_exit_instead_of_computing_on(tmp_path):
    """SIGKILL (or SIGTERM, `pkill`) to the parent runs no except clause: each worker notices
    that its parent is gone and exits, within seconds, instead of finishing its cell."""
    (tmp_path / "waiter.py").write_text(WAITER)
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "import waiter\n"
        "from optimorph.engine.parallel import map_cells\n"
        f"map_cells(waiter.wait, [{str(tmp_path)!r}] * 2, workers=2)\n"
    )
    proc, pids = _start_waiting_workers(code, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    alive = [pid for pid in pids if _alive(pid)]
    for pid in alive:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, "a worker outlived its killed parent"
