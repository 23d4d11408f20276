"""A recipe's training cells: one (problem, optimizers, precision policy) run with noise
replicas each, trained across processes and stored one file per cell as it finishes, so that a
recipe killed in its last minutes resumes (``--resume``) with only its unfinished cells.

A cell's result is what the equivalence verdicts read (trajectories, noise floors, parameter
norms, divergence steps, the losses, the stalled fraction, the state's bytes per parameter),
not the whole :class:`~optimorph.engine.result.TrainResult`: a worker sends back little, and a
cell's file holds the same arrays bit for bit (the trajectory in float32 only where float32
holds it exactly, as it holds bf16 parameters).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from optimorph.engine.parallel import default_workers, map_cells
from optimorph.results import store

__all__ = ["Cell", "train_cells", "train_cell", "clear"]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training of a recipe: ``name`` is its file under ``cells/`` (unique in the recipe)."""

    name: str
    problem: str
    optimizers: tuple[str, ...]
    precision: str
    seeds: int | tuple[int, ...]  # a count (0..n-1) or the seeds themselves
    steps: int
    batch_size: int | None
    eval_every: int
    replicas: int


def train_cells(
    recipe: str, cells: Sequence[Cell], out: Path, *, workers: int | None = None,
    progress: bool = True,
) -> dict[str, SimpleNamespace]:  # fmt: skip
    """Every cell's result by name: read from ``out/cells`` where an earlier, interrupted run
    finished it, trained (on ``workers`` processes, default one per core) otherwise, each
    written the moment it finishes."""
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"{recipe}: two cells share a name: {names}")
    done = {c.name: _read(out, c, recipe) for c in cells
            if (out / "cells" / f"{c.name}.npz").exists()}  # fmt: skip
    todo = [c for c in cells if c.name not in done]
    if done and progress:
        print(f"{recipe}: resuming; {len(done)} of {len(cells)} cells done", file=sys.stderr)

    finished = [len(done)]

    def save(i: int, result: SimpleNamespace) -> None:
        store.write_arrays(out, f"cells/{todo[i].name}", _arrays(todo[i], result))
        finished[0] += 1
        if progress:
            print(f"{recipe}: {todo[i].name} done ({finished[0]} of {len(cells)} cells)",
                  file=sys.stderr)  # fmt: skip

    workers = default_workers() if workers is None else workers
    results = map_cells(train_cell, todo, workers=workers, on_result=save)
    done.update({c.name: r for c, r in zip(todo, results, strict=True)})
    return {n: done[n] for n in names}


def clear(out: Path) -> None:
    """Remove the cell files once the recipe's results are written: nothing is left to resume."""
    shutil.rmtree(out / "cells", ignore_errors=True)


def train_cell(cell: Cell) -> SimpleNamespace:
    """One cell trained with noise replicas, reduced to what the verdicts read."""
    from optimorph.equivalence.compare import measure

    runs = measure(
        cell.problem, list(cell.optimizers), precision=cell.precision, seeds=cell.seeds,
        steps=cell.steps, batch_size=cell.batch_size, eval_every=cell.eval_every,
        replicas=cell.replicas, progress=False,
    )  # fmt: skip
    r = runs.result
    result = SimpleNamespace(
        trajectory=r.trajectory,
        diverged_at=r.diverged_at,
        eval_steps=r.eval_steps,
        evals={k: v for k, v in r.evals.items() if k.endswith("/loss")},
        stalled=r.stalled,
        config={"state_bytes_per_param": r.config["state_bytes_per_param"]},
    )
    return SimpleNamespace(result=result, floor=runs.floor, norm=runs.norm)


def _settings(cell: Cell) -> str:
    """The cell's settings as stored beside its arrays: a resumed run reuses only a cell
    trained with the same ones."""
    return json.dumps(dataclasses.asdict(cell), sort_keys=True)


def _arrays(cell: Cell, runs: SimpleNamespace) -> dict[str, np.ndarray]:
    """A finished cell as arrays (the trajectory and the stalled fraction in float32 where
    that holds them exactly: half the file), with its settings."""
    r = runs.result

    def narrow(x: np.ndarray) -> np.ndarray:
        held = np.array_equal(x.astype(np.float32), x, equal_nan=True)
        return x.astype(np.float32) if held else x

    extra = {} if r.stalled is None else {"stalled": narrow(np.asarray(r.stalled))}
    return {"settings": np.asarray(_settings(cell)),
            "trajectory": narrow(r.trajectory), "diverged_at": r.diverged_at,
            "eval_steps": r.eval_steps, "floor": runs.floor, "norm": runs.norm,
            "state_bytes_per_param": np.asarray(r.config["state_bytes_per_param"]),
            **extra, **{f"evals/{k}": v for k, v in r.evals.items()}}  # fmt: skip


def _read(out: Path, cell: Cell, recipe: str) -> SimpleNamespace:
    """:func:`_arrays` read back into what :func:`train_cell` returns; a cell trained with
    other settings (a resume after the settings changed) stops the run with one message."""
    a = store.read_arrays(out, f"cells/{cell.name}")
    stored = json.loads(str(a["settings"])) if "settings" in a else {}
    now = json.loads(_settings(cell))
    if stored != now:
        changed = ", ".join(f"{k} {stored.get(k, '?')!r} -> {v!r}" for k, v in now.items()
                            if stored.get(k) != v)  # fmt: skip
        raise store.RunDirError(
            f"{recipe}: {out}/cells/{cell.name}.npz was trained with other settings "
            f"({changed}); resume with the settings of the interrupted run, or start again "
            "with --overwrite"
        )
    stalled = a.get("stalled")
    result = SimpleNamespace(
        trajectory=a["trajectory"].astype(np.float64), diverged_at=a["diverged_at"],
        eval_steps=a["eval_steps"], evals={k[6:]: v for k, v in a.items() if k[:6] == "evals/"},
        stalled=None if stalled is None else stalled.astype(np.float64),
        config={"state_bytes_per_param": a["state_bytes_per_param"].tolist()},
    )  # fmt: skip
    return SimpleNamespace(result=result, floor=a["floor"], norm=a["norm"])
