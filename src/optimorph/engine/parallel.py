"""Independent cells of a sweep on every core: one worker process per core.

One compiled program already vmaps seeds and hyperparameter grids; cells that differ in kind
(batch size, model, precision) are separate programs, and XLA on a small CPU model uses about one
core per process. Two processes pinned one per core were measured at about 2x the throughput of
one on the 2-core reference machine (DESIGN.md section 1), so :func:`map_cells` runs cells in a
pool of worker processes, each pinned to one core with XLA's intra-op threads set to one.

Workers are started with ``spawn`` (a forked JAX runtime is unsafe) and inherit the float64
setting of the parent. A worker whose parent is gone (killed by SIGTERM or SIGKILL, which no
``except`` sees) exits within a second: a pool's orphans would otherwise go on computing their
cells for as long as they take, on the cores the next run needs. ``fn`` must be importable (a module-level function) and its argument and
result picklable. Results come back in the order of the cells.

>>> map_cells(abs, [-1, 2, -3], workers=1)
[1, 2, 3]
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from optimorph.engine import interrupts

__all__ = ["map_cells", "default_workers"]


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Exit this process as soon as its parent ``parent`` is gone (a daemon thread polling the
    parent pid: an orphan is re-parented, so ``getppid`` changes)."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(counter: Any, cores: Sequence[int], x64: bool) -> None:
    _exit_with_parent(os.getppid())
    with counter.get_lock():
        core = cores[counter.value % len(cores)]
        counter.value += 1
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    # Read when XLA's CPU client starts (at the first computation), so setting it here counts.
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
    )
    import warnings

    import jax

    from optimorph.startup import warning_printer

    jax.config.update("jax_enable_x64", x64)
    warnings.showwarning = warning_printer(warnings.showwarning)  # one line, as the command's


def map_cells(
    fn: Callable[[Any], Any],
    cells: Iterable[Any],
    *,
    workers: int | None = None,
    on_result: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[fn(c) for c in cells]``, computed on ``workers`` processes (default: one per core).

    Args:
      fn: a module-level function of one picklable argument.
      cells: the arguments.
      workers: process count; 1 (or a single cell) runs in this process, no pool.
      on_result: called as ``on_result(index, result)`` as each cell finishes (in any order):
        for progress and for writing results as they come.

    Returns:
      The results, in the order of ``cells``.

    Raises:
      The first exception a cell raised, with the cell named in a note.
    """
    cells = list(cells)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    workers = min(workers, len(cells))
    if workers <= 1:
        out = []
        for i, cell in enumerate(cells):
            out.append(_call(fn, cell))
            if on_result:
                on_result(i, out[-1])
        return out
    import jax

    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cores = list(range(workers))
    results: list[Any] = [None] * len(cells)
    # A Ctrl-C raises in here, where the workers can be stopped: the start-up handler's
    # os._exit (still in place in a parent that trains nothing itself) would leave them running.
    with interrupts.raising():
        pool = ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(counter, cores, bool(jax.config.jax_enable_x64)),
        )
        try:
            futures = {pool.submit(_call, fn, cell): i for i, cell in enumerate(cells)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if on_result:
                    on_result(i, results[i])
        except BaseException:
            workers_left = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in workers_left:
                proc.terminate()  # Ctrl-C or a failed cell: do not leave workers computing
            raise
        pool.shutdown()
    return results


def _call(fn: Callable[[Any], Any], cell: Any) -> Any:
    try:
        return fn(cell)
    except Exception as error:
        error.add_note(f"in sweep cell {cell!r}")
        raise
