"""The `optimorph` process: instant start-up, and Ctrl-C ending in exit 130 every time."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ARGS = ["train", "--problem", "two-moons(n=200)", "--optimizer", "sgd(lr=0.1)", "--seeds", "2",
        "--steps", "4000000", "--batch-size", "8", "--quiet", "--checkpoint-every", "0.3"]  # fmt: skip


def _start(out, resume=False):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Python's own SIGINT handler even when this process ignores SIGINT (a job started in the
    # background does, and its children inherit that: they would never see the Ctrl-C).
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from optimorph.cli import entry; entry()")
    return subprocess.Popen(
        [sys.executable, "-c", code, *ARGS, "--out", str(out), *(["--resume"] if resume else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.heavy
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_exits_130_with_an_intact_checkpoint_every_time(tmp_path):
    out = tmp_path / "run"

    def fresh(since):
        return [p for p in (out / "checkpoints").glob("*.npz") if p.stat().st_mtime > since]

    for attempt in range(3):  # the segfault on interrupt was seen about one time in three
        started = time.time()
        proc = _start(out, resume=attempt > 0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not fresh(started):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        assert fresh(started), "no checkpoint was written"
        time.sleep(0.3 * attempt)  # land the interrupt at different moments
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err and "interrupted" in err
        (ckpt,) = (out / "checkpoints").glob("*.npz")
        with np.load(ckpt) as z:  # loads, with its progress recorded
            assert 0 < int(z["done"]) < 4000000
            assert float(z["wall"]) > 0


def test_help_and_parse_errors_do_not_load_jax():
    code = (
        "import sys\n"
        "from optimorph import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('jax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


# Four million steps: minutes of training, so a process that ends within seconds was stopped.
LONG = ["train", "--problem", "two-moons(n=200)", "--optimizer", "sgd(lr=0.1)", "--seeds", "1",
        "--steps", "4000000", "--batch-size", "8", "--quiet"]  # fmt: skip
STARTUP_LINE = "optimorph: interrupted\n"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.2, 0.7, 1.5])
def test_ctrl_c_during_start_up_exits_130_at_once(delay, tmp_path):
    """Landing anywhere in start-up (JAX's import runs gc callbacks, where a KeyboardInterrupt
    was printed as "Exception ignored in: _xla_gc_callback" and dropped, and the run trained to
    its end), a Ctrl-C ends the process at once with exit 130 and one line."""
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from optimorph.cli import entry; print('ready', flush=True); entry()")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *LONG, "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"  # entry() is about to run: delays count from here
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    waited = time.monotonic() - sent
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    if err == STARTUP_LINE:  # in start-up: at once
        assert waited < 3, waited
    else:  # a fast machine was already training: the first chunk's end, as in the test above
        assert delay > 0.2 and "rerun the same command with --resume" in err, err
        assert waited < 60, waited


LIVE = ["train", "--problem", "two-moons(n=200)", "--optimizer", "sgd(lr=0.1)", "--seeds", "2",
        "--steps", "600", "--batch-size", "8", "--eval-every", "100", "--checkpoint-every", "0",
        "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_live_run(tmp_path_factory):
    from optimorph import cli

    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main([*LIVE, "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_the_live_metrics_write_keeps_the_checkpoint(
    presses, uninterrupted_live_run, tmp_path
):
    """The metrics so far are written after a checkpoint (``on_checkpoint``); one Ctrl-C in that
    write stops the run when the write is done, two stop it inside the write. Either way the
    checkpoint is there and ``--resume`` ends bit-identical to the uninterrupted run."""
    from optimorph import cli
    from optimorph.results import read_run

    out, marker = tmp_path / "run", tmp_path / "in-live-write"
    # The live write after every checkpoint (LIVE_EVERY_S = 0), and slowed down between its
    # metrics table and its summary; the marker tells this test the write has begun.
    code = (
        "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from optimorph import cli\n"
        "from optimorph.cli import train\n"
        "from optimorph.results import rundir\n"
        "train.LIVE_EVERY_S = 0.0\n"
        "real = rundir.write_json_atomic\n"
        "def slow(path, obj):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    time.sleep(2)\n"
        "    real(path, obj)\n"
        "rundir.write_json_atomic = slow\n"
        "cli.entry()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, *LIVE, "--out", str(out)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no live write began"
        time.sleep(0.02)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err, err[-2000:]
    (ckpt,) = (out / "checkpoints").glob("*.npz")
    with np.load(ckpt) as z:
        assert 0 < int(z["done"]) < 600

    assert cli.main([*LIVE, "--out", str(out), "--resume"]) == 0
    want, got = read_run(uninterrupted_live_run), read_run(out)
    np.testing.assert_array_equal(got.train_loss, want.train_loss)
    assert got.evals.keys() == want.evals.keys()
    for key in want.evals:
        np.testing.assert_array_equal(got.evals[key], want.evals[key])
    reference = uninterrupted_live_run / "final_params.npz"
    with np.load(out / "final_params.npz") as g, np.load(reference) as w:
        assert g.files == w.files
        for name in w.files:
            np.testing.assert_array_equal(g[name], w[name])


def test_a_reader_that_leaves_early_ends_the_listing_quietly():
    """`optimorph list optimizers | head -1`: no BrokenPipeError traceback, exit 0 (the reader
    is gone before the first write, so every write meets a closed pipe)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from optimorph.cli import entry; entry()", "list", "optimizers"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader leaves before optimorph has imported its first module
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_command_caps_fp16_to_per_operation_rounding_on_avx512(tmp_path):
    # The command adds the AVX2 cap before JAX starts (optimorph.cpu) on an AVX-512 CPU, and
    # records it; OPTIMORPH_CPU_ISA=native keeps XLA's own choice. A fresh process each, with
    # the suite's own cap taken out of the environment.
    import json

    from optimorph.cpu import FP16_CAP, cpu

    if cpu()["vector_isa"] != "AVX-512":
        pytest.skip("the cap applies on AVX-512 CPUs only")
    base = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(FP16_CAP, ""))
    code = "from optimorph.cli import entry; entry()"
    argv = ["train", "--problem", "two-moons(n=64)", "--optimizer", "sgd(lr=0.1)", "--precision",
            "fp16", "--steps", "5", "--quiet"]  # fmt: skip
    flags = {}
    for name, extra in (("capped", {}), ("native", {"OPTIMORPH_CPU_ISA": "native"})):
        out = tmp_path / name
        subprocess.run([sys.executable, "-c", code, *argv, "--out", str(out)],
                       env={**base, **extra}, check=True, capture_output=True)  # fmt: skip
        env = json.loads((out / "config.json").read_text())["environment"]
        assert env["vector_isa"] == "AVX-512"
        flags[name] = env["xla_flags"]
    assert FP16_CAP in flags["capped"] and FP16_CAP not in flags["native"]
