"""The tests' tiny sweep, and a store reduced to what two runs of it must share bit for bit."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# 8 cells in 4 batches of 2 lanes (2 learning rates x 2 precisions, each batch the 2 seeds of
# one point), 2 compiled programs: small enough to run several times within a few seconds.
TINY = """\
name = "tiny"
problems = ["least-squares(n=40, d=5)"]
precisions = ["fp32", "fp64"]
seeds = 2

[settings]
steps = 40
batch_size = 8
eval_every = 10
max_lanes = 2

[[optimizers]]
spec = "sgd"
lr = [0.05, 0.1]
"""

# Measured, not computed: how long the run took and where and when it was written.
VARYING = {"wall_time", "environment"}


def digest(store: Path) -> dict[str, str]:
    """``{cell id: SHA-256 of its numbers and records}``: every value of ``metrics.parquet`` and
    ``final_params.npz`` by its bytes (NaN included), ``summary.json``, ``config.json`` and
    ``cell.json`` without their measured fields."""
    out = {}
    for cell in sorted((store / "cells").iterdir()):
        h = hashlib.sha256()
        table = pq.read_table(cell / "metrics.parquet")
        for name in table.column_names:
            column = table.column(name).to_numpy(zero_copy_only=False)
            h.update(name.encode())
            if column.dtype.kind in "fiu":
                h.update(np.ascontiguousarray(column).tobytes())
            else:
                h.update("\0".join(map(str, column)).encode())
        with np.load(cell / "final_params.npz") as params:
            for key in sorted(params.files):
                h.update(key.encode() + params[key].tobytes())
        for name in ("summary.json", "config.json", "cell.json"):
            doc = json.loads((cell / name).read_text())
            doc = _without(doc)
            h.update(json.dumps(doc, sort_keys=True).encode())
        out[cell.name] = h.hexdigest()
    return out


def _without(doc):
    if isinstance(doc, dict):
        return {k: _without(v) for k, v in doc.items() if k not in VARYING}
    if isinstance(doc, list):
        return [_without(v) for v in doc]
    return doc
