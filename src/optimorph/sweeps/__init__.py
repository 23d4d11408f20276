"""Sweeps: a TOML grid of problems x precisions x optimizers x seeds, run cell by cell into a
store that never loses, duplicates or reruns a cell (``optimorph sweep FILE --out DIR``).

Layout: :mod:`~optimorph.sweeps.file` reads and checks a sweep file, :mod:`~optimorph.sweeps.cells`
names each cell and groups cells into compiled programs, :mod:`~optimorph.sweeps.run` runs them
(:mod:`~optimorph.sweeps.cluster` on Dask), :mod:`optimorph.results.sweep_store` keeps the results.

>>> from optimorph.sweeps import loads
>>> s = loads('problems = ["quadratic(dim=4)"]\\noptimizers = ["sgd(lr=[0.1, 0.2])"]\\n'
...           'seeds = 2\\n[settings]\\nsteps = 20\\n')
>>> len(s.cells), len(s.batches)   # 2 learning rates x 2 seeds, one compiled program
(4, 1)
"""

import importlib
from typing import Any

from optimorph.sweeps.cells import Batch, Cell, identity, versions
from optimorph.sweeps.file import Sweep, SweepFileError, load, loads

__all__ = [
    "Sweep",
    "SweepFileError",
    "SweepReport",
    "Cell",
    "Batch",
    "load",
    "loads",
    "run_sweep",
    "identity",
    "versions",
]


def __getattr__(name: str) -> Any:
    # Running needs the results layer (pyarrow, duckdb, JAX); naming cells does not.
    if name in ("run_sweep", "SweepReport"):
        return getattr(importlib.import_module("optimorph.sweeps.run"), name)
    raise AttributeError(f"module 'optimorph.sweeps' has no attribute {name!r}")
