"""Running a sweep: its unfinished batches, in this process, on local workers, or on a Dask cluster.

Each batch is one ``train`` call (one compiled program; its cells are the lanes). When the batch
ends, each of its cells not yet done is written as a run directory of its own and marked done by
an atomic rename (:mod:`optimorph.results.sweep_store`). The trainer checkpoints a batch in the
store's ``work/`` folder, so a killed sweep's rerun continues a partial batch from its last
checkpoint and skips every finished cell. A batch that raises is recorded per cell in ``failed/``
and the sweep goes on; the next run retries it.

The three ways to run produce the same store bit for bit: a batch always holds the same lanes
(they are fixed by the sweep file), and no result depends on where it was computed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optimorph.results import sweep_store
from optimorph.results.store import RunDirError
from optimorph.sweeps.cells import Batch, versions
from optimorph.sweeps.file import Sweep

__all__ = [
    "run_sweep",
    "run_batch",
    "failed_outcome",
    "print_warnings",
    "BatchTask",
    "BatchOutcome",
    "SweepReport",
    "task_key",
]


@dataclasses.dataclass(frozen=True)
class BatchTask:
    """What a worker needs to run one batch: picklable, and nothing but names and numbers."""

    out: str
    batch: Batch
    x64: bool
    checkpoint_every: float = 30.0


@dataclasses.dataclass(frozen=True)
class BatchOutcome:
    """What a batch did: cells it wrote, cells it found done, cells that failed (id: error)."""

    batch: str
    written: tuple[str, ...] = ()
    found_done: tuple[str, ...] = ()
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    wall: float = 0.0


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """The store after a run: every count in cells."""

    out: Path
    cells: int
    done: int
    done_before: int
    written: int
    failed: dict[str, Path]
    warnings: tuple[str, ...]
    wall: float

    def line(self) -> str:
        parts = [f"{self.done}/{self.cells} cells done ({self.written} this run, "
                 f"{self.done_before} before)"]  # fmt: skip
        if self.failed:
            parts.append(f"{len(self.failed)} failed (errors in {self.out / 'failed'})")
        return f"sweep: {', '.join(parts)} in {self.wall:.0f}s; results in {self.out / 'cells'}"


def task_key(task: BatchTask) -> str:
    """A Dask task key from the batch's identity: the same batch is the same task everywhere."""
    return f"optimorph-sweep-batch-{task.batch.id}"


def run_sweep(
    sweep: Sweep,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    checkpoint_every: float = 30.0,
    overwrite: bool = False,
    progress: bool = True,
) -> SweepReport:
    """Run every cell of ``sweep`` not yet done in the store ``out``.

    Args:
      sweep: a checked sweep (:func:`optimorph.sweeps.load`).
      out: the store; created, or continued when it holds this sweep.
      workers: local processes (:func:`optimorph.engine.parallel.map_cells`); 1 runs in this
        process.
      scheduler: the address of a Dask ``distributed`` scheduler (``tcp://host:8786``) whose
        workers see ``out`` at the same path; overrides ``workers``.
      checkpoint_every: seconds between a batch's checkpoints (one is also written at its end).
      overwrite: replace a store that holds another sweep.
      progress: print a progress line (cells done, running, failed, time left) on stderr.

    Returns:
      A :class:`SweepReport`; failed cells are in it, not raised.
    """
    import jax

    from optimorph.engine.progress import Progress

    started = time.perf_counter()
    with sweep_store.open_store(out, sweep.document(), sweep_text=sweep.text,
                                overwrite=overwrite) as out:  # fmt: skip
        ids = {c.id for c in sweep.cells}
        before = sweep_store.done_cells(out) & ids
        check_space(out, sweep, ids - before)  # a full disk: one message before any work
        out_abs = str(Path(out).resolve())
        x64 = bool(jax.config.jax_enable_x64)
        tasks = [BatchTask(out_abs, b, x64, float(checkpoint_every)) for b in sweep.batches
                 if not set(b.cell_ids) <= before]  # fmt: skip
        for b in sweep.batches:  # killed after its last cell's rename, before its clean-up
            if set(b.cell_ids) <= before:
                sweep_store.finish_batch(out, b.id)
        bar = Progress(len(ids), f"sweep {sweep.name}", enabled=progress, unit="cells",
                       every_s=2.0)  # fmt: skip
        tally = _Tally(bar, tasks, before)
        if scheduler is not None:
            from optimorph.sweeps.cluster import run_on_cluster

            run_on_cluster(scheduler, tasks, tally)
        elif workers > 1 and len(tasks) > 1:
            from optimorph.engine.parallel import map_cells

            tally.workers = workers
            tally.show()
            map_cells(run_batch, tasks, workers=workers, on_result=lambda i, o: tally.finished(o))
        else:
            tally.workers = 1
            for task in tasks:
                tally.show()
                tally.finished(run_batch(task))
        done = sweep_store.done_cells(out) & ids
        return SweepReport(
            out=Path(out), cells=len(ids), done=len(done), done_before=len(before),
            written=len(done - before),
            failed={k: v for k, v in sweep_store.failures(out).items() if k in ids},
            warnings=tuple(dict.fromkeys(tally.warnings)), wall=time.perf_counter() - started,
        )  # fmt: skip


def space_needed(sweep: Sweep, pending: set[str]) -> int:
    """Bytes the ``pending`` cells keep at the least once finished: their final parameters
    (2 bytes each, the narrowest format), 8 bytes per metrics value (Parquet compresses the
    rest away at best) and 2 KB of JSON. A lower bound: checkpoints come on top."""
    total = 0
    for c in sweep.cells:
        if c.id in pending:
            s = c.settings
            values = s["steps"] // s["log_every"] + 8 * (s["steps"] // s["eval_every"] + 1)
            total += 2 * sweep.params.get(c.problem, 0) + 8 * values + 2048
    return total


def check_space(out: str | os.PathLike, sweep: Sweep, pending: set[str]) -> None:
    """Refuse to start when the disk holding ``out`` cannot take what ``pending`` cells write.

    Raises:
      RunDirError: the free space is below :func:`space_needed`; the message says both.
    """
    need, free = space_needed(sweep, pending), shutil.disk_usage(out).free
    if free < need:
        raise RunDirError(
            f"{out}: {_mb(free)} free on its disk, and the {len(pending)} cells still to run "
            f"write at least {_mb(need)} (final parameters and metrics, before checkpoints); "
            "free some space or choose another --out"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class _Tally:
    """Counts for the progress line: cells done, running and failed."""

    def __init__(self, bar: Any, tasks: Sequence[BatchTask], before: set[str]):
        self.bar = bar
        self.pending = {t.batch.id: t for t in tasks}
        self.before = before
        self.failed = 0
        self.workers = 1
        self.running_ids: Callable[[], set[str]] | None = None  # a cluster says which batches run
        self.warnings: list[str] = []
        if before:
            bar.advance(len(before), "(done before)", warmup=True)

    def running(self) -> int:
        """Cells of the batches running now: those a cluster reports, else the first
        ``workers`` batches still pending (a pool takes them in order)."""
        if self.running_ids is not None:
            running = [self.pending[b] for b in self.running_ids() if b in self.pending]
        else:
            running = list(self.pending.values())[: self.workers]
        return sum(len(set(t.batch.cell_ids) - self.before) for t in running)

    def note(self) -> str:
        return f"| {self.running()} running, {self.failed} failed"

    def show(self) -> None:
        self.bar.advance(0, self.note())

    def finished(self, outcome: BatchOutcome) -> None:
        task = self.pending.pop(outcome.batch, None)
        if task is None:  # a task a cluster ran twice: counted once
            return
        self.failed += len(outcome.failed)
        self.warnings.extend(outcome.warnings)
        n = len(set(task.batch.cell_ids) - self.before)
        self.bar.advance(n, self.note(), warmup=self.bar.done == len(self.before))


# ---------------------------------------------------------------- one batch, in any process

_PROBLEMS: dict[str, Any] = {}  # one Problem per spec and process: the trainer's programs are
# cached per problem object, so the batches of one problem reuse their compiled programs


def run_batch(task: BatchTask) -> BatchOutcome:
    """Train one batch and write its unfinished cells (module level: workers import it).

    Exceptions of the training become failure records; an interrupt propagates.
    """
    import jax

    from optimorph.precision import PrecisionWarning

    jax.config.update("jax_enable_x64", task.x64)
    out, batch = Path(task.out), task.batch
    found = tuple(c for c in batch.cell_ids if sweep_store.is_done(out, c))
    if len(found) == len(batch.cell_ids):
        sweep_store.finish_batch(out, batch.id)
        return BatchOutcome(batch.id, found_done=found)
    started = time.perf_counter()
    sweep_store.clear_stages(out, batch.id)
    with warnings.catch_warnings(record=True) as caught:
        # Recorded and reported once by the sweep (a grid repeats them per point), not raised.
        warnings.simplefilter("always", PrecisionWarning)
        try:
            written = _train_and_write(out, batch, task.checkpoint_every)
        except Exception as err:  # noqa: BLE001 - the sweep goes on; the error is kept per cell
            return failed_outcome(task, err, traceback.format_exc(), time.perf_counter() - started)
    messages = tuple(str(w.message) for w in caught if issubclass(w.category, PrecisionWarning))
    return BatchOutcome(batch.id, written=tuple(written), found_done=found, warnings=messages,
                        wall=time.perf_counter() - started)  # fmt: skip


def failed_outcome(task: BatchTask, err: BaseException, trace: str = "", wall: float = 0.0
                   ) -> BatchOutcome:  # fmt: skip
    """Record ``err`` for each unfinished cell of the task's batch (``failed/<cell>.json``)."""
    out, batch = Path(task.out), task.batch
    text = f"{type(err).__name__}: {err}"
    failed, found = {}, []
    for cell in batch.cell_ids:
        if sweep_store.is_done(out, cell):
            found.append(cell)
            continue
        failed[cell] = text
        sweep_store.record_failure(out, cell, {
            "cell": cell, "batch": batch.id, "error": text, "traceback": trace,
            "versions": versions(),
        })  # fmt: skip
    return BatchOutcome(batch.id, found_done=tuple(found), failed=failed, wall=wall)


def _train_and_write(out: Path, batch: Batch, checkpoint_every: float) -> list[str]:
    from optimorph.engine import train
    from optimorph.problems import problem

    prob = _PROBLEMS.get(batch.problem)
    if prob is None:
        prob = _PROBLEMS[batch.problem] = problem(batch.problem)
    settings = dict(batch.settings)
    result = train(
        prob, list(batch.optimizers), seeds=list(batch.seeds), precision=batch.precision,
        steps=settings["steps"], batch_size=settings["batch_size"],
        eval_every=settings["eval_every"], log_every=settings["log_every"],
        divergence_factor=settings["divergence_factor"],
        checkpoint_dir=sweep_store.work_dir(out, batch.id) / "checkpoints",
        checkpoint_every=checkpoint_every, progress=False,
    )  # fmt: skip
    written = []
    for i in range(len(batch.optimizers)):
        for j in range(len(batch.seeds)):
            cell = batch.cells[i][j]
            record = {"id": cell, "batch": batch.id, "lanes": batch.cell_ids,
                      "versions": versions()}  # fmt: skip
            if sweep_store.commit_cell(
                out, cell, lambda d, i=i, j=j, r=record: _write_cell(d, result, i, j, r, prob),
                batch_id=batch.id,
            ):  # fmt: skip
                written.append(cell)
    sweep_store.finish_batch(out, batch.id)
    return written


def _write_cell(directory: Path, result: Any, i: int, j: int, record: dict, prob: Any) -> None:
    from optimorph.results import write_run
    from optimorph.results.store import write_json

    write_run(_one_run(result, i, j, record), directory, problem=prob)
    write_json(directory, "cell", record)


def _one_run(result: Any, i: int, j: int, record: dict) -> Any:
    """Optimizer ``i``, seed ``j`` of a batch's result as a result of its own."""
    import jax

    def pick(a):
        return None if a is None else a[i : i + 1, j : j + 1]

    config = {k: v for k, v in result.config.items() if k != "grids"}
    for key in ("optimizers", "optimizers_canonical", "state_bytes_per_param"):
        config[key] = [config[key][i]]
    config["seeds"] = [result.seeds[j]]
    config["sweep"] = {"cell": record["id"], "batch": record["batch"]}
    name = result.optimizers[i]
    return dataclasses.replace(
        result,
        optimizers=[name],
        seeds=[result.seeds[j]],
        train_loss=pick(result.train_loss),
        evals={k: pick(v) for k, v in result.evals.items()},
        diverged_at=pick(result.diverged_at),
        final_params=[jax.tree.map(lambda a: a[j : j + 1], result.final_params[i])]
        if result.final_params else [],
        config=config,
        stalled=pick(result.stalled),
        replica_distance=pick(result.replica_distance),
        trajectory=pick(result.trajectory),
        probes={k: pick(v) for k, v in result.probes.items()},
        rounded_hparams={k: v for k, v in result.rounded_hparams.items() if k == name},
    )  # fmt: skip


def print_warnings(report: SweepReport, stream: Any = None) -> None:
    """Each precision warning of the sweep once, in the command's one-line form."""
    for message in report.warnings:
        print(f"optimorph: warning: {message}", file=stream or sys.stderr)
