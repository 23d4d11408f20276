"""A sweep's cells, their identities, and the compiled programs ("batches") that run them.

A *cell* is one training run: a problem, one optimizer with every hyperparameter set, a precision
policy, one seed and the run settings. Its identity is a SHA-256 of a canonical JSON of that
configuration together with the versions of optimorph, jax, jaxlib, optax and numpy: the same in
every process and on every machine (never Python's ``hash()``, which is salted per process), and
different whenever something that could change a bit of the result changes.

A *batch* is the cells one compiled program runs as lanes: those that differ only in numbers
(hyperparameter values, seeds). Which lanes share a program can change the last bits of a lane's
result (XLA's CPU code for reductions depends on the array's shape, lane axis included:
measured in docs/sweeps.md), so the batches are a function of the sweep file alone: every
execution mode and every resume runs each cell in the same batch, and the store equals an
uninterrupted in-process run bit for bit.

>>> c = Cell("quadratic(dim=4)", "sgd(lr=0.1)", "sgd(lr=0.1)", "fp32", 0,
...          {"steps": 10, "batch_size": 1, "eval_every": 5, "log_every": 1,
...           "divergence_factor": 1e4}, x64=True)
>>> len(c.id), c.id == dataclasses.replace(c, optimizer="sgd(lr=1e-1)").id
(24, True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Cell", "Batch", "identity", "versions", "batches"]

# Bump when the meaning of a cell's configuration changes: every identity changes with it.
IDENTITY_FORMAT = 1
ID_LENGTH = 24  # hex digits: 96 bits, no collision in any sweep a person will run


@functools.cache
def _versions() -> tuple:
    import optimorph

    found = [("optimorph", optimorph.__version__)]
    for package in ("jax", "jaxlib", "optax", "numpy"):
        try:
            found.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            found.append((package, None))
    return tuple(found)


def versions() -> dict[str, str | None]:
    """The code a cell's numbers depend on: optimorph and its numerical dependencies."""
    return dict(_versions())


def identity(config: Mapping[str, Any], salt: str = "cell") -> str:
    """The hex SHA-256 prefix of ``config`` and :func:`versions` as canonical JSON.

    Canonical: keys sorted, no spaces, floats as Python's shortest round-trip ``repr``; NaN and
    infinity refused (they have no JSON spelling to agree on).
    """
    doc = {"format": IDENTITY_FORMAT, "kind": salt, "config": config, "versions": versions()}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of a sweep.

    Attributes:
      problem: the problem's canonical spec.
      optimizer: the optimizer spec of this point as built from the file (the run's label).
      canonical: the same optimizer with every hyperparameter spelled out.
      precision: the precision policy's canonical spec.
      seed: the run's seed.
      settings: steps, batch_size, eval_every, log_every, divergence_factor (resolved).
      x64: whether JAX's float64 was on (it decides the widest float of the update).
    """

    problem: str
    optimizer: str
    canonical: str
    precision: str
    seed: int
    settings: Mapping[str, Any]
    x64: bool = True

    def config(self) -> dict[str, Any]:
        """What the identity hashes: everything but the label (two spellings, one cell)."""
        return {
            "problem": self.problem,
            "optimizer": self.canonical,
            "precision": self.precision,
            "seed": int(self.seed),
            "settings": dict(self.settings),
            "x64": bool(self.x64),
        }

    @functools.cached_property
    def id(self) -> str:
        return identity(self.config())


@dataclasses.dataclass(frozen=True)
class Batch:
    """Cells run as the lanes of one compiled program: ``optimizers`` x ``seeds``.

    Attributes:
      problem, precision, settings: shared by every lane.
      optimizers: the optimizer specs (labels), one per row.
      seeds: the seeds, one per column.
      cells: the cell identities, ``cells[i][j]`` for optimizer i and seed j.
      cost: a relative estimate of the work (lanes x steps x batch x parameters), for ordering.
    """

    problem: str
    precision: str
    settings: Mapping[str, Any]
    optimizers: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: tuple[tuple[str, ...], ...]
    cost: float = 0.0

    @functools.cached_property
    def id(self) -> str:
        return identity({"cells": [list(row) for row in self.cells]}, salt="batch")

    @property
    def cell_ids(self) -> list[str]:
        return [c for row in self.cells for c in row]

    @property
    def lanes(self) -> int:
        return len(self.optimizers) * len(self.seeds)


def batches(
    cells: Sequence[Cell],
    program_of: Mapping[str, Any],
    *,
    max_lanes: int,
    work_per_step: Mapping[str, float] | None = None,
) -> list[Batch]:
    """Group cells into batches, in a deterministic order: the costliest first, then file order.

    Cells share a program when they agree on problem, precision, settings and the optimizer's
    program (``program_of[canonical]``: its name, flags and schedule kinds). A group is the
    product of its optimizer points and seeds; it is cut into batches of at most ``max_lanes``
    lanes (whole points times a run of seeds).

    Args:
      cells: every cell of the sweep, in file order.
      program_of: the static key of each canonical optimizer spec.
      max_lanes: the most lanes one program runs.
      work_per_step: per problem, examples per step x parameters (for the cost estimate).
    """
    groups: dict[tuple, dict] = {}
    for cell in cells:
        key = (cell.problem, cell.precision, json.dumps(dict(cell.settings), sort_keys=True),
               repr(program_of[cell.canonical]))  # fmt: skip
        group = groups.setdefault(key, {"points": {}, "seeds": {}, "ids": {}, "cell": cell})
        group["points"].setdefault(cell.canonical, cell.optimizer)
        group["seeds"].setdefault(cell.seed, None)
        group["ids"][cell.canonical, cell.seed] = cell.id
    out = []
    for group in groups.values():
        cell = group["cell"]
        points, seeds = list(group["points"].items()), list(group["seeds"])
        seed_chunk = min(len(seeds), max_lanes)
        point_chunk = max(1, max_lanes // seed_chunk)
        per_lane = cell.settings["steps"] * (work_per_step or {}).get(cell.problem, 1.0)
        for s in range(0, len(seeds), seed_chunk):
            chunk_seeds = seeds[s : s + seed_chunk]
            for p in range(0, len(points), point_chunk):
                chunk_points = points[p : p + point_chunk]
                ids = tuple(
                    tuple(group["ids"][canonical, seed] for seed in chunk_seeds)
                    for canonical, _ in chunk_points
                )
                out.append(Batch(
                    problem=cell.problem, precision=cell.precision, settings=dict(cell.settings),
                    optimizers=tuple(label for _, label in chunk_points), seeds=tuple(chunk_seeds),
                    cells=ids, cost=float(per_lane * len(chunk_points) * len(chunk_seeds)),
                ))  # fmt: skip
    order = sorted(range(len(out)), key=lambda i: (-out[i].cost, i))
    return [out[i] for i in order]
