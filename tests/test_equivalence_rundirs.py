"""compare and phase-diagram runs: redrawn from disk, refused without --resume, resumed after a
real interrupt to the same numbers."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from optimorph import cli

COMPARE = ["compare", "sgd(lr=1e-3)", "signsgd(lr=1e-3)", "--problem",
           "least-squares(n=64, d=6, hetero=10)", "--precision", "fp16,fp64", "--seeds", "2",
           "--steps", "60", "--quiet"]  # fmt: skip
PHASE = ["phase-diagram", "--pairs", "sgd(lr=0.01)|signsgd(lr=0.01)", "--mantissa-bits",
         "4,10,23", "--heterogeneity", "1,100", "--steps", "20", "--seeds", "2"]  # fmt: skip


@pytest.mark.parametrize("argv, files", [(COMPARE, ["divergence.png", "tracking.gif"]),
                                         (PHASE, ["phase_diagram.png"])])  # fmt: skip
def test_report_redraws_a_run_from_disk(argv, files, tmp_path, check_page):
    out = tmp_path / "run"
    assert cli.main([*argv, "--out", str(out)]) == 0
    for name in [*files, "report.html"]:
        (out / name).unlink()
    assert cli.main(["report", str(out)]) == 0  # no training: only stored files are read
    assert all((out / name).exists() for name in files)
    check_page(out / "report.html")
    assert cli.main([*argv, "--out", str(out)]) == 2  # holds a run: refused
    assert cli.main([*argv, "--out", str(out), "--overwrite"]) == 0


def _run(argv, out, resume=False):
    # Python's own SIGINT handler even when this process ignores SIGINT (a job started in the
    # background does, and its children inherit that: they would never see the Ctrl-C).
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from optimorph.cli import entry; entry()")
    extra = ["--resume"] if resume else []
    # No persistent compilation cache: the reference run filled it, and a process that does not
    # compile can finish before the interrupt lands.
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_ENABLE_COMPILATION_CACHE="false")
    return subprocess.Popen([sys.executable, "-c", code, *argv, "--out", str(out), *extra],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


@pytest.mark.heavy
@pytest.mark.parametrize("argv, result", [(COMPARE, "equivalence.json"),
                                          (PHASE, "phase_diagram.json")])  # fmt: skip
def test_an_interrupted_process_resumes_to_the_same_result(argv, result, tmp_path):
    reference = tmp_path / "ref"
    assert cli.main([*argv, "--out", str(reference)]) == 0
    out = tmp_path / "run"
    proc = _run(argv, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "checkpoints").glob("*.npz")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt landed")
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    again = _run(argv, out, resume=True)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    want = json.loads((reference / result).read_text())
    got = json.loads((out / result).read_text())
    want.pop("curves", None), got.pop("curves", None)
    assert got == want
