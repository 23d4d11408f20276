"""A sweep store's curves as TensorBoard event files: one TensorBoard run per finished cell.

``optimorph export STORE --tensorboard [--logdir DIR]`` writes, for every finished cell, a
directory ``DIR/<problem>/<precision>/<optimizer point>/seed-<k>`` holding one event file with
every metric of the cell's ``metrics.parquet`` as a scalar series, tagged ``<split>/<metric>``
(``train/loss``, ``test/accuracy``, ...) at the steps it was measured. ``tensorboard --logdir
DIR`` then shows each cell as a run, and its run filter matches on problem, precision, point
and seed. Event files are written by tensorboardX (``pip install 'optimorph[tensorboard]'``),
the writer TensorBoard's own docs point PyTorch users to; the directory names are the cells'
labels made safe for a file system.

Each cell's directory is written in a temporary directory and renamed into place when
complete, so an interrupted export leaves no half-written run, and a rerun exports only the
cells not exported yet (a cell finished since then included).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from optimorph.results import sweep_store
from optimorph.results.rundir import METRICS_FILE
from optimorph.results.sweep_results import read_store

__all__ = ["export_tensorboard", "run_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=()+\-]+")


def run_name(row: dict) -> str:
    """The TensorBoard run of a cell: ``problem/precision/point/seed-k``, each part with the
    characters a file system or TensorBoard's run filter trips on replaced by ``_``.

    >>> run_name({"problem": "two-moons(n=500)", "precision": "bf16,v=fp32",
    ...           "label": "adam(lr=0.001, b1=0.9)", "seed": 2})
    'two-moons(n=500)/bf16,v=fp32/adam(lr=0.001,_b1=0.9)/seed-2'
    """
    parts = (row["problem"], row["precision"], row["label"])
    safe = [_UNSAFE.sub("_", str(p)).strip("._") or "_" for p in parts]
    return "/".join([*safe, f"seed-{int(row['seed'])}"])


def export_tensorboard(store: str | os.PathLike, logdir: str | os.PathLike) -> tuple[int, int]:
    """Write every finished cell of a sweep store as a TensorBoard run under ``logdir``.

    Args:
      store: a sweep store (``optimorph sweep``'s ``--out``).
      logdir: where the runs go (created if missing); runs already there are kept.

    Returns:
      ``(written, kept)``: runs written now, and finished cells whose run was already there.

    Raises:
      RunDirError: ``store`` is not a sweep store.
      ImportError: tensorboardX is missing (the message says how to install it).
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(
            "exporting to TensorBoard needs tensorboardX: pip install 'optimorph[tensorboard]'"
        ) from None
    rows = [r for r in read_store(store).rows if r["status"] == "done"]
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    for row in rows:
        target = logdir / run_name(row)
        if target.is_dir():
            kept += 1
            continue
        table = pq.read_table(Path(store) / sweep_store.CELLS / row["cell"] / METRICS_FILE)
        columns = table.select(["step", "split", "metric", "value"]).to_pydict()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted export
        with SummaryWriter(logdir=str(staging)) as writer:
            for step, split, metric, value in zip(*columns.values(), strict=True):
                if value is not None:
                    writer.add_scalar(f"{split}/{metric}", value, int(step))
        staging.rename(target)
        written += 1
    return written, kept
