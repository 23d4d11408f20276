"""A sweep on Dask: a LocalCluster of two worker processes, and a scheduler and a worker started
as processes of their own on loopback, each store equal to the in-process run bit for bit."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from sweep_helpers import digest

from optimorph.sweeps import load, run_sweep

distributed = pytest.importorskip("distributed")


@pytest.mark.heavy
def test_a_local_cluster_writes_the_in_process_store(tiny_file, reference, tmp_path):
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.ERROR,
    )  # fmt: skip
    with cluster:
        address = cluster.scheduler_address
        report = run_sweep(load(tiny_file), tmp_path / "store", scheduler=address, progress=False)
    assert (report.done, report.written, report.failed) == (8, 8, {})
    assert digest(tmp_path / "store") == reference[1]


@pytest.mark.heavy
def test_a_worker_killed_mid_batch_leaves_the_store_exact(tiny_file, reference, tmp_path):
    # SIGKILL the worker running a batch once the batch has started (its work directory is
    # there): the scheduler hands the batch to the other worker (or the restarted one), which
    # resumes the partial cells from their checkpoints; nothing is lost, duplicated or failed.
    store, out = tmp_path / "store", {}
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )  # fmt: skip
    with cluster, distributed.Client(cluster) as client:
        sweep = threading.Thread(target=lambda: out.update(report=run_sweep(
            load(tiny_file), store, scheduler=cluster.scheduler_address, progress=False)))
        sweep.start()
        busy, deadline = [], time.monotonic() + 120
        while not busy and time.monotonic() < deadline:
            time.sleep(0.05)
            if any((store / "work").glob("*")):
                busy = [a for a, keys in client.processing().items() if keys]
        assert busy, "no batch started within 2 minutes"
        pids = client.run(os.getpid, workers=busy[:1])
        os.kill(pids[busy[0]], signal.SIGKILL)
        assert len(list((store / "cells").iterdir())) < 8, "killed before the sweep ended"
        sweep.join(timeout=600)
    report = out["report"]
    assert (report.done, report.failed) == (8, {})
    assert digest(store) == reference[1]


@pytest.mark.heavy
def test_a_scheduler_and_a_worker_started_apart(tiny_file, reference, tmp_path):
    address_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m"]
    scheduler = subprocess.Popen([*dask, "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", "0", "--no-dashboard", "--scheduler-file",
                                  str(address_file)], stderr=subprocess.DEVNULL)  # fmt: skip
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        address = json.loads(address_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen([*dask, "distributed.cli.dask_worker", address, "--nthreads",
                                   "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        report = run_sweep(load(tiny_file), tmp_path / "store", scheduler=address, progress=False)
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    assert (report.done, report.failed) == (8, {})
    assert digest(tmp_path / "store") == reference[1]


def test_an_unreachable_scheduler_is_one_clear_error(tiny_file, tmp_path):
    with pytest.raises(RuntimeError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9' "
                       r"\(connection refused\)"):  # fmt: skip
        run_sweep(load(tiny_file), tmp_path / "store", scheduler="tcp://127.0.0.1:9",
                  progress=False)  # fmt: skip
