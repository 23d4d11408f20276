"""The Hessian spectrum of a saved run at its final parameters, stored as ``hessian.json``.

For each optimizer (and each of the first ``seeds`` seeds) of a train run directory: the top-k and
the k most negative eigenvalues (Lanczos with full reorthogonalization), the trace (Hutchinson,
with its standard error), the top eigenvalue of each layer's diagonal block and the spectral
density (stochastic Lanczos quadrature), all in float64 on the first ``examples`` training
examples (the trainer's evaluation subset is the first 2048). See :mod:`optimorph.probes.hessian`.
Each spectrum is written as soon as it is done; rerun with the same settings on the same
``final_params.npz`` (its SHA-256 is stored), the command keeps the spectra already there and
computes the rest.

``hessian.json``::

    {"examples": 2048, "dtype": "float64", "k": 5, "lanczos_steps": 50, "samples": 100,
     "entries": [{"optimizer": "sgd(lr=0.1)", "optimizer_index": 0, "seed": 0,
                  "top": [...], "bottom": [...], "trace": ..., "trace_se": ...,
                  "layers": {"dense0": ...}, "density": {"grid": [...], "values": [...]},
                  "n_params": ...}, ...]}
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optimorph.atomic import write_json_atomic
from optimorph.engine.progress import Progress
from optimorph.precision import require_x64
from optimorph.probes.hessian import spectrum
from optimorph.problems import problem as make_problem
from optimorph.results.rundir import (
    HESSIAN_FILE,
    PARAMS_FILE,
    read_config,
    read_final_params,
    read_hessian,
)

__all__ = ["hessian_of_run"]


def hessian_of_run(
    run_dir: str | os.PathLike,
    *,
    examples: int = 2048,
    k: int = 5,
    lanczos_steps: int = 50,
    samples: int = 100,
    seeds: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute the spectrum at every optimizer's final parameters and write ``hessian.json``.

    Args:
      run_dir: a train run directory that kept its final parameters.
      examples: the first this many training examples form the batch the Hessian is of.
      k: how many of the largest and of the most negative eigenvalues.
      lanczos_steps: Lanczos steps (the Krylov dimension, at most the parameter count).
      samples: Rademacher vectors of Hutchinson's trace estimate.
      seeds: the first this many seeds of the run (each its own spectrum).
      progress: a progress line per spectrum.

    Returns:
      The document written (format in the module docstring).

    Raises:
      FileNotFoundError: the run kept no final parameters.
      ValueError: the parameters do not fit the run's problem, or a count is below 1.
    """
    require_x64("the Hessian spectrum of a saved run (float64)")
    for name, value in (("examples", examples), ("k", k), ("lanczos_steps", lanczos_steps),
                        ("samples", samples), ("seeds", seeds)):  # fmt: skip
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    run_dir = Path(run_dir)
    meta = read_config(run_dir)
    prob = make_problem(meta["config"]["problem"])
    f = jnp.float64
    batch = tuple(
        jnp.asarray(a[:examples], f) if np.issubdtype(np.asarray(a).dtype, np.floating)
        else jnp.asarray(a[:examples])
        for a in prob.train
    )  # fmt: skip
    template = prob.init(jax.random.key(0))
    optimizers = list(meta["optimizers"])
    run_seeds = list(meta["seeds"])[: int(seeds)]
    diverged = np.asarray(meta["diverged_at"]).reshape(len(optimizers), -1)
    params_file = run_dir / PARAMS_FILE
    digest = hashlib.sha256(params_file.read_bytes()).hexdigest() if params_file.exists() else None
    settings = {"examples": int(min(examples, prob.n_train)), "dtype": "float64", "k": int(k),
                "lanczos_steps": int(lanczos_steps), "samples": int(samples),
                "params_sha256": digest}  # fmt: skip
    # Each spectrum is saved as soon as it is done; a rerun with the same settings keeps them.
    earlier = read_hessian(run_dir)
    same = earlier is not None and all(earlier.get(key) == v for key, v in settings.items())
    kept = {(e["optimizer_index"], e["seed"]): e for e in earlier["entries"]} if same else {}
    bar = Progress(len(optimizers) * len(run_seeds), "hessian", enabled=progress, every_s=0,
                   unit="spectra")  # fmt: skip
    entries = []
    for i, opt in enumerate(optimizers):
        stacked = read_final_params(run_dir, template, i)
        for s, seed in enumerate(run_seeds):
            if (i, int(seed)) in kept and kept[(i, int(seed))]["optimizer"] == opt:
                entries.append(kept[(i, int(seed))])
                bar.advance(1, "(kept from an earlier run)")
                continue
            params = jax.tree.map(lambda a, s=s: jnp.asarray(a[s], f), stacked)
            entry = {"optimizer": opt, "optimizer_index": i, "seed": int(seed)}
            finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
            if diverged[i, s] >= 0 or not finite:
                entry["diverged"] = True  # no spectrum of NaN weights
            else:
                entry.update(spectrum(prob.loss, params, batch, k=int(k), steps=int(lanczos_steps),
                                      samples=int(samples)))  # fmt: skip
            entries.append(entry)
            write_json_atomic(run_dir / HESSIAN_FILE, {**settings, "entries": entries})
            bar.advance(1)
    doc = {**settings, "entries": entries}
    write_json_atomic(run_dir / HESSIAN_FILE, doc)
    return doc

