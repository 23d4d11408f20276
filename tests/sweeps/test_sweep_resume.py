"""A sweep killed at any moment loses, duplicates and reruns nothing: the same command finishes
it, and the store is the uninterrupted run's bit for bit."""

import json
import random
import subprocess
import sys
import time

import pytest

from sweep_helpers import digest

from optimorph.cli import main
from optimorph.sweeps import load, run, run_sweep


def _metrics_files(store):
    """``{cell: (inode, mtime)}`` of each done cell's metrics: a rewrite would change them."""
    out = {}
    for cell in (store / "cells").iterdir():
        stat = (cell / "metrics.parquet").stat()
        out[cell.name] = (stat.st_ino, stat.st_mtime_ns)
    return out


@pytest.mark.heavy
def test_sigkill_at_random_moments_then_the_same_command_finishes_it(tiny_file, reference,
                                                                      tmp_path):  # fmt: skip
    store = tmp_path / "store"
    command = [sys.executable, "-m", "optimorph.cli", "sweep", str(tiny_file), "--out", str(store),
               "--checkpoint-every", "0"]  # fmt: skip
    rng = random.Random(18)
    seen: dict = {}
    for attempt in range(3):
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as proc:  # fmt: skip
            try:
                header = proc.stderr.readline()  # printed once the file is checked
                assert "8 cells in 4 batches" in header, header
                if attempt == 0:  # right after the first cell is renamed in: mid-sweep
                    deadline = time.monotonic() + 120
                    while not any((store / "cells").glob("*")) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert proc.poll() is None, "the sweep ended before the first kill"
                else:  # anywhere in compiling, training, checkpointing or writing
                    time.sleep(rng.uniform(0.0, 2.0))
            finally:
                proc.kill()  # SIGKILL: no handler, no cleanup
        now = _metrics_files(store)
        assert {k: now[k] for k in seen} == seen, "a finished cell was written again"
        seen = now

    # The same sweep once more, here (its programs are compiled in this process already).
    report = run_sweep(load(tiny_file), store, progress=False)
    assert (report.done, report.failed) == (8, {}) and report.done_before == len(seen)
    now = _metrics_files(store)
    assert {k: now[k] for k in seen} == seen, "a finished cell was written again"
    assert digest(store) == reference[1]
    assert list((store / "work").iterdir()) == [] and list((store / "failed").iterdir()) == []


def test_a_failing_batch_is_recorded_and_the_sweep_goes_on(tiny_file, reference, tmp_path,
                                                          monkeypatch):  # fmt: skip
    sweep = load(tiny_file)
    broken = sweep.batches[1].id
    original = run._train_and_write

    def train_and_write(out, batch, checkpoint_every):
        if batch.id == broken:
            raise FloatingPointError("the batch blew up")
        return original(out, batch, checkpoint_every)

    monkeypatch.setattr(run, "_train_and_write", train_and_write)
    report = run_sweep(sweep, tmp_path / "store", progress=False)
    assert (report.done, len(report.failed)) == (6, 2)
    record = json.loads(next(iter(report.failed.values())).read_text())
    assert record["error"] == "FloatingPointError: the batch blew up"
    assert record["batch"] == broken and "Traceback" in record["traceback"]

    monkeypatch.setattr(run, "_train_and_write", original)
    report = run_sweep(sweep, tmp_path / "store", progress=False)
    assert (report.done, report.done_before, report.written, report.failed) == (8, 6, 2, {})
    assert digest(tmp_path / "store") == reference[1]


def test_a_store_of_another_sweep_is_refused(tiny_file, reference, tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text(tiny_file.read_text().replace("seeds = 2", "seeds = 3"))
    assert main(["sweep", str(other), "--out", str(reference[0])]) == 2
    err = capsys.readouterr().err
    assert f"optimorph: error: {reference[0]} holds another sweep" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 2  # the plan's line, then the error


def test_a_batch_killed_after_its_last_cell_leaves_no_work_folder(tiny_file, reference,
                                                                 tmp_path):  # fmt: skip
    """A kill between a batch's last rename and its clean-up leaves work/<batch>; the next run
    has nothing of that batch to run, and removes it."""
    import shutil

    store = tmp_path / "store"
    shutil.copytree(reference[0], store)
    batch = load(tiny_file).batches[0].id
    (store / "work" / batch / "checkpoints").mkdir(parents=True)
    (store / "work" / batch / "checkpoints" / "checkpoint-x.npz").write_bytes(b"left")
    report = run_sweep(load(tiny_file), store, progress=False)
    assert (report.done, report.written) == (8, 0)
    assert list((store / "work").iterdir()) == []
    assert digest(store) == reference[1]


def test_a_full_disk_stops_the_sweep_before_any_cell_runs(tiny_file, tmp_path, monkeypatch,
                                                          capsys):
    import shutil

    from optimorph.sweeps.run import space_needed

    sweep = load(tiny_file)
    need = space_needed(sweep, {c.id for c in sweep.cells})
    assert need > 8 * 2048  # 8 cells: parameters, metrics and JSON each
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=need - 1))
    store = tmp_path / "store"
    assert main(["sweep", str(tiny_file), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cells still to run write at least" in err and "choose another --out" in err
    assert not list((store / "cells").iterdir())
