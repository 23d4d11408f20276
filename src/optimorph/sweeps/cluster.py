"""Running a sweep's batches on a Dask ``distributed`` cluster (``optimorph sweep --scheduler``).

Each batch is one task whose key is made from the batch's identity, so a batch is the same task
for every client: submitting a sweep again while its tasks still run attaches to them instead
of starting them twice. A worker that dies mid-batch has its task rescheduled by the scheduler;
the cells it had renamed into the store stay done, the rest are written by the new run of the
batch (from the batch's last checkpoint), and a cell is never written twice
(:mod:`optimorph.results.sweep_store`). The workers must see the store at the same path (one
machine, or a shared file system) and run the same versions of optimorph and its dependencies.

``distributed`` is an optional dependency: ``pip install 'optimorph[cluster]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["run_on_cluster"]

CONNECT_TIMEOUT_S = 30


def run_on_cluster(address: str, tasks: Sequence[Any], tally: Any) -> None:
    """Submit every task to the scheduler at ``address``; report each outcome to ``tally``.

    Raises:
      RuntimeError: ``distributed`` is not installed, or the scheduler cannot be reached.
    """
    try:
        import distributed
    except ImportError:
        raise RuntimeError(
            "--scheduler needs Dask's distributed package: pip install 'optimorph[cluster]' "
            "(or pip install distributed)"
        ) from None
    from optimorph.sweeps.run import failed_outcome, run_batch, task_key

    fix = ("start one with 'dask scheduler' and workers with 'dask worker ADDRESS', or run "
           "without --scheduler")  # fmt: skip
    refused = _refused(address)  # at once, where the client would retry for its whole timeout
    if refused:
        raise RuntimeError(f"cannot reach the Dask scheduler at {address!r} ({refused}); {fix}")
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as err:
        message = f"cannot reach the Dask scheduler at {address!r} ({err}); {fix}"
        raise RuntimeError(message) from None
    with client:
        keys = {task_key(t): t.batch.id for t in tasks}

        def running() -> set[str]:
            busy = client.processing()  # {worker: [task keys]}
            return {keys[k] for ks in busy.values() for k in ks if k in keys}

        tally.running_ids = running
        tally.workers = max(1, len(client.scheduler_info().get("workers", {})))
        futures = [client.submit(run_batch, t, key=task_key(t), pure=False) for t in tasks]
        task_of = {f.key: t for f, t in zip(futures, tasks, strict=True)}
        tally.show()
        try:
            for future in distributed.as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: its workers died
                    outcome = failed_outcome(task_of[future.key], err)
                tally.finished(outcome)
                future.release()
        except BaseException:
            client.cancel(futures)
            raise


def _refused(address: str) -> str | None:
    """Why a ``tcp://host:port`` address refuses connections, or None (other kinds: None)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        return None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT_S):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except OSError:
        return None  # a slow network: the client's own timeout decides
