"""The schema of each file of a run directory, checked whenever :mod:`~optimorph.results.rundir`
reads the file: one validator per file kind.

====================  ===========================================================================
``config.json``       :func:`check_config`: every kind's ``kind``, ``format_version``, ``config``;
                      a train run's optimizers, seeds, eval keys, divergence steps, wall time,
                      grids, state bytes per parameter (one per optimizer)
``metrics.parquet``   :func:`check_metrics`: the columns and types of :data:`METRICS_SCHEMA`, no
                      nulls in key columns, the optimizers and seeds of ``config.json``
``summary.json``      :func:`check_summary`: the format of :mod:`optimorph.results.summary`
``final_params.npz``  :func:`check_final_params`: ``opt<i>[...]`` arrays of numbers, a row per seed
``hessian.json``      :func:`check_hessian`: the format of :mod:`optimorph.results.hessian`
====================  ===========================================================================

A file that does not fit raises one :class:`~optimorph.results.store.RunDirError` of one line:
the file, what is wrong and the fix, e.g. ``runs/x/config.json: field 'eval_keys' is missing;
this directory was not written by optimorph train (or by an older version): rerun the training``.
A file that cannot be parsed at all (empty, truncated, not JSON) is reported by
:func:`~optimorph.results.store.read_file`. Fields beyond the schema are allowed: a newer writer
may add some, and readers ignore what they do not know.

>>> check_config("runs/x/config.json", {"kind": "train", "format_version": {"v": 1}})
Traceback (most recent call last):
optimorph.results.store.RunDirError: runs/x/config.json: field 'format_version' is an object,
expected an integer; this directory was not written by optimorph train (or by an older version):
rerun the training
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optimorph.results.store import FORMAT_VERSION, RunDirError
from optimorph.results.summary import TRAIN_SPLIT

__all__ = [
    "METRICS_SCHEMA",
    "check_config",
    "check_metrics",
    "check_summary",
    "check_final_params",
    "check_hessian",
]

METRICS_SCHEMA = pa.schema(
    [
        ("optimizer", pa.string()),
        ("optimizer_index", pa.int32()),
        ("seed", pa.int64()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)
"""Columns of ``metrics.parquet``. ``optimizer_index`` tells apart two rows of one spec."""

RERUN_TRAINING = (
    "this directory was not written by optimorph train (or by an older version): rerun the training"
)
RERUN_COMMAND = (
    "this directory was not written by optimorph (or by an older version): rerun the command "
    "that made it"
)


def check_config(path: str | os.PathLike, doc: Any, *, kind: str | None = None) -> None:
    """Validate a parsed ``config.json``: the fields of every kind, and a train run's fields
    when its kind is ``train`` (or absent: the first format had no kind).

    Args:
      path: the file, for the message.
      doc: its parsed content.
      kind: the kind the caller needs (``"train"`` for ``read_run``); None accepts any.

    Raises:
      RunDirError: one line naming the file, what is wrong and the fix.
    """
    train = kind == "train" or (isinstance(doc, dict) and doc.get("kind", "train") == "train")
    fix = RERUN_TRAINING if train else RERUN_COMMAND
    with _reporting(path, fix):
        _check(doc, _CONFIG, "")
        if "format_version" in doc and not 1 <= doc["format_version"] <= FORMAT_VERSION:
            newer = doc["format_version"] > FORMAT_VERSION
            raise _Bad("format_version", f"is {doc['format_version']}", fix=(
                f"this optimorph reads format {FORMAT_VERSION}: upgrade optimorph" if newer
                else RERUN_COMMAND))  # fmt: skip
        found = doc.get("kind", "train")
        if kind is not None and found != kind:
            raise _Bad("kind", f"is {found!r}, not {kind!r}", fix=(
                f"give a {kind} run directory (the --out of optimorph {kind})"))  # fmt: skip
        if train:
            _check(doc, _TRAIN_CONFIG, "")
            _check_train_config(doc)


def check_metrics(path: str | os.PathLike, table: pa.Table, config: Mapping[str, Any]) -> None:
    """Validate ``metrics.parquet`` (read as ``table``) against :data:`METRICS_SCHEMA` and the
    run's validated ``config.json``: every column with its type (any integer width, a string
    or large string), no nulls but in ``value`` (read as NaN), optimizer indices and seeds of
    the run, and at least one row of the training loss."""
    with _reporting(path, RERUN_TRAINING):
        names = table.column_names
        for field in METRICS_SCHEMA:
            if field.name not in names:
                raise _Bad(None, f"column {field.name!r} is missing (columns: {', '.join(names)})")
            found = table.schema.field(field.name).type
            if not _same_kind(found, field.type):
                raise _Bad(None, f"column {field.name!r} has type {found}, expected {field.type}")
            nulls = table.column(field.name).null_count
            if nulls and field.name != "value":
                raise _Bad(None, f"column {field.name!r} has {nulls} null values")
        if table.num_rows == 0:
            raise _Bad(None, "holds no rows")
        index = table.column("optimizer_index")
        low, high = pc.min(index).as_py(), pc.max(index).as_py()
        n_opt = len(config["optimizers"])
        if low < 0 or high >= n_opt:
            raise _Bad(None, f"column 'optimizer_index' runs from {low} to {high}, but config.json "
                             f"lists {n_opt} optimizers")  # fmt: skip
        seeds = pc.unique(table.column("seed")).to_numpy()
        stray = np.setdiff1d(seeds, np.asarray(config["seeds"], dtype=np.int64))
        if stray.size:
            raise _Bad(None, f"column 'seed' holds seed {stray[0]}, which config.json does not "
                             f"list ({config['seeds']})")  # fmt: skip
        is_loss = pc.and_(pc.equal(table.column("split"), TRAIN_SPLIT),
                          pc.equal(table.column("metric"), "loss"))  # fmt: skip
        if not pc.any(is_loss).as_py():
            raise _Bad(None, f"holds no training loss (split {TRAIN_SPLIT!r}, metric 'loss')")


def check_summary(path: str | os.PathLike, doc: Any) -> None:
    """Validate a parsed ``summary.json`` (format: :mod:`optimorph.results.summary`)."""
    with _reporting(path, RERUN_TRAINING):
        _check(doc, _SUMMARY, "")
        if doc["train_window"] is not None and len(doc["train_window"]) != 2:
            raise _Bad("train_window", "must be [first step, last step]")
        names = [o["optimizer"] for o in doc["optimizers"]]
        stray = [n for n in doc["ranking"]["order"] if n not in names]
        if stray or len(doc["ranking"]["means"]) != len(names):
            raise _Bad("ranking", f"does not rank the optimizers {names}")
        for i, grid in enumerate(doc.get("grids", ())):
            if len(grid["means"]) != len(grid["members"]):
                raise _Bad(f"grids[{i}].means", f"has {len(grid['means'])} values for "
                                                f"{len(grid['members'])} members")  # fmt: skip
            if grid["best"] is not None and grid["best"] not in grid["members"]:
                raise _Bad(f"grids[{i}].best", f"is {grid['best']!r}, not one of the members")


def check_final_params(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Validate the entries of ``final_params.npz``: each named ``opt<i><keystr>`` (as
    ``write_run`` flattens each optimizer's pytree), an array of numbers with one row per seed,
    the same number of rows in all."""
    with _reporting(path, RERUN_TRAINING):
        if not arrays:
            raise _Bad(None, "holds no arrays")
        rows = set()
        for name, array in arrays.items():
            if not _PARAM_NAME.match(name):
                raise _Bad(None, f"entry {name!r} is not named opt<i>[...] (one optimizer's leaf)")
            if array.dtype.kind not in "biuf" or array.ndim < 1:
                raise _Bad(None, f"entry {name!r} is a {array.dtype} array of shape {array.shape}, "
                                 "expected numbers with a leading seed axis")  # fmt: skip
            rows.add(array.shape[0])
        if len(rows) > 1:
            raise _Bad(None, f"entries have different numbers of seeds ({sorted(rows)})")


def check_hessian(path: str | os.PathLike, doc: Any) -> None:
    """Validate a parsed ``hessian.json`` (format: :mod:`optimorph.results.hessian`)."""
    fix = f"delete it and run optimorph hessian {os.path.dirname(path) or '.'} again"
    with _reporting(path, fix):
        _check(doc, _HESSIAN, "")
        for i, entry in enumerate(doc["entries"]):
            if entry.get("diverged"):
                continue
            _check(entry, _SPECTRUM, f"entries[{i}]")
            density = entry["density"]
            if len(density["grid"]) != len(density["values"]):
                raise _Bad(f"entries[{i}].density", "has grid and values of different lengths")


# --- the schemas ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Type:
    """A JSON scalar or container type: its name in messages and its test."""

    name: str
    test: Callable[[Any], bool]


@dataclasses.dataclass(frozen=True)
class _List:
    item: Any
    min_len: int = 0


@dataclasses.dataclass(frozen=True)
class _Map:
    """An object with any keys, every value of one schema."""

    value: Any


@dataclasses.dataclass(frozen=True)
class _Nullable:
    inner: Any


INT = _Type("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUMBER = _Type("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
STRING = _Type("a string", lambda v: isinstance(v, str))
BOOL = _Type("true or false", lambda v: isinstance(v, bool))
OBJECT = _Type("an object", lambda v: isinstance(v, dict))
# A dict is an object with those fields; a name ending in '?' is optional.
_CONFIG = {"kind?": STRING, "format_version?": INT, "config?": OBJECT, "environment?": OBJECT}
_GRID = {"spec": STRING, "members": _List(STRING, 1), "axes": _Map(_List(NUMBER, 1))}
_PROGRESS = {"done": INT, "steps": INT, "group": INT, "groups": INT}
_TRAIN_CONFIG = {
    "config": {"progress?": _PROGRESS, "grids?": _List(_GRID),
               "state_bytes_per_param?": _List(NUMBER)},  # fmt: skip
    "optimizers": _List(STRING, 1),
    "seeds": _List(INT, 1),
    "eval_keys": _List(STRING),
    "diverged_at": _List(_List(INT)),
    "wall_time": NUMBER,
    "problem?": OBJECT,
}
_STATS = {"mean": _Nullable(NUMBER), "std": _Nullable(NUMBER), "min": _Nullable(NUMBER),
          "max": _Nullable(NUMBER), "n": INT}  # fmt: skip
_SUMMARY = {
    "wall_time": NUMBER,
    "seeds": _List(INT, 1),
    "last_eval_step": _Nullable(INT),
    "train_window": _Nullable(_List(INT)),
    "optimizers": _List(
        {
            "optimizer": STRING,
            "index": INT,
            "final": _Map(_STATS),
            "n_diverged": INT,
            "diverged": _List({"seed": INT, "step": INT}),
        }
    ),
    "ranking": {"metric": STRING, "means": _List(_Nullable(NUMBER)), "order": _List(STRING),
                "rule": STRING},  # fmt: skip
    "grids?": _List({**_GRID, "metric": STRING, "means": _List(_Nullable(NUMBER)),
                     "rule": STRING, "best": _Nullable(STRING)}),  # fmt: skip
}
_HESSIAN = {
    "examples": INT,
    "dtype": STRING,
    "k": INT,
    "lanczos_steps": INT,
    "samples": INT,
    "params_sha256?": _Nullable(STRING),
    "entries": _List(
        {"optimizer": STRING, "optimizer_index": INT, "seed": INT, "diverged?": BOOL}
    ),
}
_SPECTRUM = {
    "top": _List(NUMBER, 1),
    "bottom": _List(NUMBER, 1),
    "trace": NUMBER,
    "trace_se": NUMBER,
    "layers": _Map(NUMBER),
    "density": {"grid": _List(NUMBER), "values": _List(NUMBER)},
}
_PARAM_NAME = re.compile(r"opt\d+\[")


def _check_train_config(doc: dict[str, Any]) -> None:
    """What a train config's fields must agree on, beyond their types."""
    optimizers, seeds = doc["optimizers"], doc["seeds"]
    if len(set(seeds)) != len(seeds):
        raise _Bad("seeds", f"repeats a seed ({seeds})")
    for i, key in enumerate(doc["eval_keys"]):
        split, sep, metric = key.partition("/")
        if not (sep and split and metric) or split == TRAIN_SPLIT:
            raise _Bad(f"eval_keys[{i}]", f"is {key!r}, not 'split/metric' (e.g. 'test/accuracy')")
    shape = [len(row) for row in doc["diverged_at"]]
    if shape != [len(seeds)] * len(optimizers):
        raise _Bad("diverged_at", f"has rows of lengths {shape}, expected {len(optimizers)} rows "
                                  f"of {len(seeds)} (one per optimizer and seed)")  # fmt: skip
    memory = doc["config"].get("state_bytes_per_param")
    if memory is not None and len(memory) != len(optimizers):
        raise _Bad(
            "config.state_bytes_per_param",
            f"has {len(memory)} values, expected {len(optimizers)} (one per optimizer)",
        )
    for i, grid in enumerate(doc["config"].get("grids", ())):
        stray = [m for m in grid["members"] if m not in optimizers]
        if stray:
            raise _Bad(f"config.grids[{i}].members", f"names {stray[0]!r}, not an optimizer of "
                                                     "the run")  # fmt: skip


class _Bad(Exception):
    """A value that does not fit: its field (``None`` for the file as a whole) and what is wrong,
    with the fix when it is not the file's usual one."""

    def __init__(self, where: str | None, what: str, fix: str | None = None):
        super().__init__(where, what)
        self.where, self.what, self.fix = where, what, fix


class _reporting:
    """Turn a :class:`_Bad` raised in the block into the file's one-line :class:`RunDirError`."""

    def __init__(self, path: str | os.PathLike, fix: str):
        self.path, self.fix = path, fix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if not isinstance(err, _Bad):
            return False
        if err.where is None:
            subject = ""
        elif err.where:
            subject = f"field {err.where!r} "
        else:
            subject = "the top level "
        raise RunDirError(f"{self.path}: {subject}{err.what}; {err.fix or self.fix}") from None


def _check(value: Any, schema: Any, where: str) -> None:
    """Raise :class:`_Bad` at the first place ``value`` does not fit ``schema``."""
    if isinstance(schema, _Nullable):
        if value is not None:
            _check(value, schema.inner, where)
    elif isinstance(schema, _Type):
        if not schema.test(value):
            raise _Bad(where, f"is {_describe(value)}, expected {schema.name}")
    elif isinstance(schema, _List):
        if not isinstance(value, list):
            raise _Bad(where, f"is {_describe(value)}, expected a list")
        if len(value) < schema.min_len:
            raise _Bad(where, "is an empty list")
        for i, item in enumerate(value):
            _check(item, schema.item, f"{where}[{i}]")
    elif isinstance(schema, _Map):
        _check(value, OBJECT, where)
        for key, item in value.items():
            _check(item, schema.value, _join(where, key))
    else:  # an object with these fields
        _check(value, OBJECT, where)
        for key, field in schema.items():
            name = key.removesuffix("?")
            if name in value:
                _check(value[name], field, _join(where, name))
            elif name == key:
                raise _Bad(_join(where, name), "is missing")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _describe(value: Any) -> str:
    """A JSON value's type in words, with the value when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 30 else "a string"
    return "a list" if isinstance(value, list) else "an object"


def _same_kind(found: pa.DataType, expected: pa.DataType) -> bool:
    """Parquet written by another tool may widen integers or use large strings."""
    for kind in (pa.types.is_integer, pa.types.is_floating):
        if kind(expected):
            return kind(found)
    return pa.types.is_string(found) or pa.types.is_large_string(found)
