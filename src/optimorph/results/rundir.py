"""A run directory: everything a training run produced, as files that outlive the process.

```
<run>/config.json        result.config (under "config"), optimizers, seeds, eval keys, divergence,
                         wall time, the problem, and the environment (versions, backend, devices,
                         host, UTC time)
<run>/metrics.parquet    every number of the run in tidy long form, one row per value:
                         optimizer, optimizer_index, seed, step, split, metric, value
<run>/summary.json       final statistics over seeds per optimizer (optimorph.results.summary)
<run>/final_params.npz   final parameters, when the result carries them
<run>/hessian.json       the Hessian spectrum at the final parameters (``optimorph hessian``)
<run>/*.png              figures (drawn by optimorph.report from the files above)
```

In ``metrics.parquet`` the per-step minibatch loss ``train_loss`` has ``split='train_step'``,
``metric='loss'``; a trajectory probe's output ``probes["inst_gap"]`` has ``split='probe'``,
``metric='inst_gap'``; an evaluation ``evals["test/accuracy"]`` has ``split='test'``,
``metric='accuracy'``. NaN values (diverged runs) are stored as NaN, not null.

Every file is written atomically; ``config.json`` is written after the data, so a directory with a
``config.json`` has its data complete even if the process died while drawing figures. Every file is
checked against its schema when read (:mod:`optimorph.results.schema`): a missing, damaged or
foreign file is one ``RunDirError`` naming the file, what is wrong and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from optimorph.engine.result import TrainResult
from optimorph.problems.base import Problem
from optimorph.atomic import atomic_path, write_json_atomic
from optimorph.results.schema import (
    METRICS_SCHEMA,
    check_config,
    check_final_params,
    check_hessian,
    check_metrics,
    check_summary,
)
from optimorph.results.environment import environment
from optimorph.results.store import FORMAT_VERSION, RunDirError, read_file
from optimorph.results.summary import TRAIN_SPLIT, summarize

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "PARAMS_FILE",
    "HESSIAN_FILE",
    "METRICS_SCHEMA",
    "write_run",
    "read_run",
    "read_config",
    "read_summary",
    "read_hessian",
    "read_final_params",
    "metrics_table",
    "environment",
    "query",
]

PROBE_SPLIT = "probe"  # trajectory-probe outputs, per logged step like the training loss
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "summary.json"
PARAMS_FILE = "final_params.npz"
HESSIAN_FILE = "hessian.json"

def write_run(
    result: TrainResult,
    out_dir: str | os.PathLike,
    *,
    problem: Problem | None = None,
) -> Path:
    """Write ``result`` as a run directory (layout in the module docstring).

    Args:
      result: the finished run.
      out_dir: the directory; created if missing. Files already there are replaced.
      problem: the problem trained on; its name, sizes and ``info`` go into ``config.json``.

    Figures are drawn by :mod:`optimorph.report` from these files (``save_figures``/``redraw``):
    results never import the report layer.

    Returns:
      The run directory's path.

    Raises:
      ValueError: an array's shape disagrees with the optimizers, seeds or steps, or an eval key is
        not of the form ``"split/metric"``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics_table(result)
    with atomic_path(out / METRICS_FILE) as tmp:
        pq.write_table(table, tmp)
    write_json_atomic(out / SUMMARY_FILE, summarize(result))
    if result.final_params:
        _write_params(result, out / PARAMS_FILE)
    write_json_atomic(out / CONFIG_FILE, _config(result, problem))
    return out


def read_run(run_dir: str | os.PathLike) -> TrainResult:
    """Rebuild the ``TrainResult`` of a run directory from ``metrics.parquet`` and ``config.json``.

    Arrays come back as float64 (``steps``, ``eval_steps``, ``diverged_at`` as int64) with the
    values written, NaN included. ``final_params`` is left empty: load ``final_params.npz`` with
    ``np.load`` when needed. ``eval_steps`` is empty when the run had no evaluations.

    Raises:
      RunDirError: a file is missing or does not fit its schema, or ``metrics.parquet`` does not
        hold exactly one value per (optimizer, seed, step) of every metric ``config.json`` lists.
    """
    run_dir = Path(run_dir)
    meta = read_config(run_dir, kind="train")
    table = read_file(run_dir / METRICS_FILE, pq.read_table)
    check_metrics(run_dir / METRICS_FILE, table, meta)
    col = {name: table.column(name).to_numpy() for name in table.column_names}
    n_opt = len(meta["optimizers"])
    seeds = np.asarray(meta["seeds"], dtype=np.int64)
    seed_order = np.argsort(seeds)
    seed_pos = seed_order[np.searchsorted(seeds, col["seed"], sorter=seed_order)]

    def unstack(mask: np.ndarray, steps: np.ndarray, what: str) -> np.ndarray:
        out = np.full((n_opt, len(seeds), len(steps)), np.nan)
        step_pos = np.searchsorted(steps, col["step"][mask])
        index = (col["optimizer_index"][mask], seed_pos[mask], step_pos)
        filled = np.zeros(out.shape, dtype=bool)
        filled[index] = True
        if mask.sum() != out.size or not filled.all():
            raise RunDirError(
                f"{run_dir / METRICS_FILE} does not hold one row of {what} per (optimizer, seed, "
                f"step): {mask.sum()} rows for {out.shape} values; rerun the training"
            )
        out[index] = col["value"][mask]
        return out

    is_train = col["split"] == TRAIN_SPLIT
    is_loss = is_train & (col["metric"] == "loss")
    steps = np.unique(col["step"][is_loss])
    train_loss = unstack(is_loss, steps, "the training loss")
    is_stalled = is_train & (col["metric"] == "stalled")
    stalled = unstack(is_stalled, steps, "stalled") if is_stalled.any() else None
    is_probe = col["split"] == PROBE_SPLIT
    probes = {
        str(name): unstack(is_probe & (col["metric"] == name), steps, f"probe {name}")
        for name in np.unique(col["metric"][is_probe])
    }
    eval_steps = np.unique(col["step"][~is_train & ~is_probe])
    evals = {}
    for key in meta["eval_keys"]:
        split, metric = _split_key(key)
        evals[key] = unstack((col["split"] == split) & (col["metric"] == metric), eval_steps, key)
    return TrainResult(
        optimizers=list(meta["optimizers"]),
        seeds=[int(s) for s in seeds],
        steps=steps,
        train_loss=train_loss,
        eval_steps=eval_steps,
        evals=evals,
        diverged_at=np.asarray(meta["diverged_at"], dtype=np.int64).reshape(n_opt, len(seeds)),
        wall_time=float(meta["wall_time"]),
        config=meta["config"],
        stalled=stalled,
        probes=probes,
    )


def read_config(run_dir: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """The parsed and validated ``config.json`` of a run directory (of ``kind`` when given)."""
    path = Path(run_dir) / CONFIG_FILE
    doc = read_file(path, _read_json)
    check_config(path, doc, kind=kind)
    return doc


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed and validated ``summary.json`` of a run directory (format:
    ``optimorph.results.summary``)."""
    path = Path(run_dir) / SUMMARY_FILE
    doc = read_file(path, _read_json)
    if isinstance(doc, dict) and "optimizers" in doc and "ranking" not in doc:
        # Written before summaries stated their ranking rule: derive it again from the stored
        # metrics (the summary is a function of them), so older runs still report.
        doc = summarize(read_run(run_dir))
    check_summary(path, doc)
    return doc


def read_hessian(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed and validated ``hessian.json`` of a run directory (``optimorph.results.hessian``),
    or None when the run has none."""
    path = Path(run_dir) / HESSIAN_FILE
    if not path.exists():
        return None
    doc = read_file(path, _read_json)
    check_hessian(path, doc)
    return doc


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def metrics_table(result: TrainResult) -> pa.Table:
    """Every value of ``result`` as a long table with ``METRICS_SCHEMA``.

    Rows are ordered by metric, then optimizer, seed and step.
    """
    _check_shapes(result)
    blocks = [(TRAIN_SPLIT, "loss", result.steps, result.train_loss)]
    if result.stalled is not None:  # fraction of updates rounding absorbed, per logged step
        blocks.append((TRAIN_SPLIT, "stalled", result.steps, result.stalled))
    blocks += [(PROBE_SPLIT, name, result.steps, v) for name, v in sorted(result.probes.items())]
    blocks += [(*_split_key(k), result.eval_steps, v) for k, v in result.evals.items()]
    names = np.asarray(result.optimizers, dtype=object)
    seeds = np.asarray(result.seeds, dtype=np.int64)
    tables = []
    for split, metric, steps, values in blocks:
        o, s, t = np.indices(values.shape).reshape(3, -1)
        n = values.size
        columns = [
            names[o],
            o.astype(np.int32),
            seeds[s],
            np.asarray(steps, dtype=np.int64)[t],
            np.full(n, split, dtype=object),
            np.full(n, metric, dtype=object),
            np.asarray(values, dtype=np.float64).reshape(-1),
        ]
        tables.append(pa.Table.from_arrays(columns, schema=METRICS_SCHEMA))
    return pa.concat_tables(tables)


def query(run_dirs: Iterable[str | os.PathLike], sql: str) -> pa.Table:
    """Run a DuckDB SQL query over the metrics of several run directories.

    The query sees a view ``metrics``: the rows of every ``metrics.parquet`` (``METRICS_SCHEMA``)
    plus a column ``run`` holding the run directory as given.

    Args:
      run_dirs: run directories.
      sql: one SELECT statement.

    Returns:
      The result as a ``pyarrow.Table`` (``.to_pylist()`` gives a list of dicts).

    >>> query(["runs/a", "runs/b"],                                           # doctest: +SKIP
    ...       "select run, optimizer, avg(value) from metrics "
    ...       "where split = 'test' and metric = 'accuracy' group by all")
    """
    run_dirs = [str(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("query needs at least one run directory")
    selects = [
        f"select *, {_sql_string(d)} as run "
        f"from read_parquet({_sql_string(str(Path(d) / METRICS_FILE))})"
        for d in run_dirs
    ]
    with duckdb.connect() as con:
        con.sql("create view metrics as " + " union all ".join(selects))
        return con.sql(sql).to_arrow_table()


def _config(result: TrainResult, problem: Problem | None) -> dict[str, Any]:
    config = {
        "kind": "train",
        "format_version": FORMAT_VERSION,
        "config": result.config,
        "optimizers": list(result.optimizers),
        "seeds": [int(s) for s in result.seeds],
        "eval_keys": list(result.evals),
        "diverged_at": np.asarray(result.diverged_at, dtype=np.int64).tolist(),
        "wall_time": float(result.wall_time),
    }
    if problem is not None:
        config["problem"] = {
            "name": problem.name,
            "n_train": problem.n_train,
            "evals": {name: int(np.shape(batch[0])[0]) for name, batch in problem.evals.items()},
            "info": dict(problem.info),
        }
    config["environment"] = environment()
    return config


def read_final_params(run_dir: str | os.PathLike, template: Any, optimizer: int = 0) -> Any:
    """One optimizer's final parameters from ``final_params.npz``, shaped like ``template`` (a
    params pytree of the run's problem) with a leading seed axis on every leaf.

    Raises:
      FileNotFoundError: the run kept no parameters.
      RunDirError: the file is damaged or does not fit its schema.
      ValueError: the file's entries do not match ``template`` or ``optimizer`` is not in it.
    """
    path = Path(run_dir) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the run kept no final parameters")
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    arrays = read_file(path, _read_npz)
    check_final_params(path, arrays)
    names = [f"opt{optimizer}{jax.tree_util.keystr(p)}" for p, _ in flat]
    stored = sorted(k for k in arrays if k.startswith(f"opt{optimizer}["))
    if sorted(names) != stored:
        raise ValueError(
            f"{path} holds no parameters of optimizer {optimizer} shaped like this problem's "
            f"model (entries {stored[:3]}...)"
        )
    leaves = [arrays[name] for name in names]
    for (key_path, like), leaf in zip(flat, leaves, strict=True):
        if leaf.shape[1:] != np.shape(like):
            raise ValueError(f"{path}: {jax.tree_util.keystr(key_path)} has shape "
                             f"{leaf.shape[1:]}, the model {np.shape(like)}")  # fmt: skip
    return jax.tree.unflatten(treedef, leaves)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f, np.load(f) as z:  # our handle: np.load leaks on bad zips
        return {k: z[k] for k in z.files}


def _write_params(result: TrainResult, path: Path) -> None:
    """Flatten each optimizer's parameter pytree into ``opt<i><keystr>`` entries of one npz."""
    arrays = {}
    for i, params in enumerate(result.final_params):
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            array = np.asarray(leaf)
            # np.save writes ml_dtypes formats (bfloat16, float8) as raw bytes that load back as
            # void; every one of them is exactly representable in float32.
            if array.dtype.kind not in "biufc":
                array = array.astype(np.float32)
            arrays[f"opt{i}{jax.tree_util.keystr(key_path)}"] = array
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _check_shapes(result: TrainResult) -> None:
    shape = (len(result.optimizers), len(result.seeds))
    expected = {
        "train_loss": (*shape, len(result.steps)),
        "diverged_at": shape,
        **{f"evals[{k!r}]": (*shape, len(result.eval_steps)) for k in result.evals},
    }
    actual = {
        "train_loss": np.shape(result.train_loss),
        "diverged_at": np.shape(result.diverged_at),
        **{f"evals[{k!r}]": np.shape(v) for k, v in result.evals.items()},
    }
    for name, want in expected.items():
        if actual[name] != want:
            raise ValueError(
                f"TrainResult.{name} has shape {actual[name]}, expected {want} "
                f"(optimizers, seeds{', steps' if len(want) == 3 else ''})"
            )


def _split_key(key: str) -> tuple[str, str]:
    """``"test/accuracy"`` -> ``("test", "accuracy")``; the split is what precedes the first '/'."""
    split, sep, metric = key.partition("/")
    if not (sep and split and metric) or split == TRAIN_SPLIT:
        raise ValueError(
            f"eval key {key!r} must be 'split/metric' (e.g. 'test/accuracy') with a split other "
            f"than {TRAIN_SPLIT!r}, which names the per-step training loss"
        )
    return split, metric


def _sql_string(text: str) -> str:
    # SQL string literal: the only escape inside single quotes is a doubled quote.
    return "'" + text.replace("'", "''") + "'"
