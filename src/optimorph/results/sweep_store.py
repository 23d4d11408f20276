"""A sweep's results store: one directory per finished cell, marked done by an atomic rename.

```
<out>/config.json              kind "sweep": the sweep's identity, its cells and batches
<out>/sweep.toml               the sweep file as it was given
<out>/cells/<cell id>/         a finished cell: a train run directory (config.json,
                               metrics.parquet, summary.json, final_params.npz) and cell.json
<out>/work/<batch id>/         a batch in progress: the trainer's checkpoints, cells being written
<out>/failed/<cell id>.json    the error of a cell whose batch failed (removed once it is done)
```

A cell is written in full in ``work/`` (every file flushed to disk) and then renamed into
``cells/``: a directory there is complete, a killed writer leaves nothing there, and of two
writers of one cell (a rescheduled task) the second rename fails and its copy is dropped, so no
cell is ever duplicated or half-written. Resuming is "the sweep's cells minus ``cells/``".

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> commit_cell(out, "c1", lambda d: (d / "x.txt").write_text("1"))
True
>>> commit_cell(out, "c1", lambda d: (d / "x.txt").write_text("2")), sorted(done_cells(out))
(False, ['c1'])
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from optimorph.atomic import fsync_dir, fsync_tree, write_json_atomic, write_text_atomic
from optimorph.results.store import CONFIG_FILE, RunDirError, claim, write_config

__all__ = [
    "KIND",
    "open_store",
    "done_cells",
    "is_done",
    "commit_cell",
    "record_failure",
    "failures",
    "work_dir",
    "finish_batch",
    "clear_stages",
]

KIND = "sweep"
CELLS = "cells"
WORK = "work"
FAILED = "failed"
SWEEP_FILE = "sweep.toml"


@contextlib.contextmanager
def open_store(
    out: str | os.PathLike,
    document: Mapping[str, Any],
    *,
    sweep_text: str,
    overwrite: bool = False,
) -> Iterator[Path]:
    """Hold ``out`` as the store of the sweep ``document`` describes while the block runs.

    A new or empty directory gets ``config.json`` and ``sweep.toml`` before any cell runs; a
    store of the same sweep (``document["sweep_id"]``) is continued; a store of another sweep
    or another kind of run is refused unless ``overwrite``.

    Raises:
      RunDirError: the directory cannot be used; the message names the fix.
    """
    with claim(out, KIND, resume=True, overwrite=overwrite) as out:
        if (out / CONFIG_FILE).exists():
            from optimorph.results.rundir import read_config

            held = read_config(out, kind=KIND)["config"]
            if held.get("sweep_id") != document["sweep_id"]:
                raise RunDirError(
                    f"{out} holds another sweep ({held.get('file', '?')}, "
                    f"{len(held.get('cells', []))} cells, or the same file run with other "
                    "versions of optimorph, jax, jaxlib, optax or numpy); choose another --out, "
                    "or pass --overwrite to replace it"
                )
        else:
            write_text_atomic(out / SWEEP_FILE, sweep_text)
            write_config(out, KIND, document)
        for sub in (CELLS, WORK, FAILED):
            (out / sub).mkdir(exist_ok=True)
        yield out


def done_cells(out: str | os.PathLike) -> set[str]:
    """The identities of the finished cells."""
    cells = Path(out) / CELLS
    if not cells.is_dir():
        return set()
    return {p.name for p in cells.iterdir() if p.is_dir() and not p.name.startswith(".")}


def is_done(out: str | os.PathLike, cell_id: str) -> bool:
    return (Path(out) / CELLS / cell_id).is_dir()


def work_dir(out: str | os.PathLike, batch_id: str) -> Path:
    """Where a batch keeps its checkpoints and the cells it is writing."""
    return Path(out) / WORK / batch_id


def commit_cell(
    out: str | os.PathLike, cell_id: str, write: Callable[[Path], Any], *, batch_id: str = "_"
) -> bool:
    """Write a cell with ``write(directory)`` and mark it done by renaming it into ``cells/``.

    Returns:
      True when this call finished the cell, False when it was done already (the copy written
      here is dropped: a cell is never written twice).
    """
    out = Path(out)
    target = out / CELLS / cell_id
    if target.is_dir():
        return False
    stage = work_dir(out, batch_id) / f".stage-{cell_id}-{secrets.token_hex(4)}"
    stage.mkdir(parents=True)
    try:
        write(stage)
        fsync_tree(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(stage, target)  # atomic; fails when another writer finished it first
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(stage, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    (out / FAILED / f"{cell_id}.json").unlink(missing_ok=True)
    return True


def record_failure(out: str | os.PathLike, cell_id: str, doc: Mapping[str, Any]) -> None:
    """``failed/<cell id>.json``: why a cell did not finish (it is retried on the next run)."""
    if is_done(out, cell_id):
        return
    path = Path(out) / FAILED / f"{cell_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, dict(doc))


def failures(out: str | os.PathLike) -> dict[str, Path]:
    """``{cell id: its failed/*.json}`` for the cells that failed and are not done since."""
    folder = Path(out) / FAILED
    if not folder.is_dir():
        return {}
    done = done_cells(out)
    return {p.stem: p for p in sorted(folder.glob("*.json")) if p.stem not in done}


def finish_batch(out: str | os.PathLike, batch_id: str) -> None:
    """Drop a batch's checkpoints and leftovers once all its cells are done."""
    shutil.rmtree(work_dir(out, batch_id), ignore_errors=True)


def clear_stages(out: str | os.PathLike, batch_id: str) -> None:
    """Remove half-written cells a killed writer of this batch left behind."""
    for stage in work_dir(out, batch_id).glob(".stage-*"):
        shutil.rmtree(stage, ignore_errors=True)
