"""The compiled trainer: jit + lax.scan over steps, vmap over (hyperparameters x seeds).

Every (optimizer, seed) run of one *program* (optimizers that differ only in numbers: learning
rates, betas, schedule parameters) is one lane of a vmapped, scanned program compiled once.
Optimizers that differ in kind or flags get one program each. The loop runs in chunks; between
chunks a progress line advances and, with ``checkpoint_dir``, a checkpoint is written atomically so
an interrupted run resumes where it stopped. Ctrl-C takes effect at the end of the running chunk,
after a checkpoint (:mod:`optimorph.engine.interrupts`).

Seeds are shared across optimizers: seed s gives the same initial parameters and the same batch
sequence to every optimizer, so comparisons over seeds are paired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimorph.engine import interrupts
from optimorph.engine.lanes import LaneSplit
from optimorph.engine.progress import Progress
from optimorph.engine.result import TrainResult
from optimorph.engine.step import (
    BatchOrder,
    Noise,
    Start,
    apply_update,
    check_policy,
    gradient,
    lane_hparams,
    learning_rate,
    numeric_hparams,
    run_keys,
    seed_key,
    start,
)
from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.optimizers.grid import expand as expand_grid
from optimorph.optimizers.registry import is_named
from optimorph.precision import precision as make_precision
from optimorph.precision import require_x64, state_bytes_per_param
from optimorph.probes import Probe, StepValues
from optimorph.probes import builtin as builtin_probes
from optimorph.probes.base import REDUCERS
from optimorph.problems import Problem
from optimorph.problems.models import n_params
from optimorph.problems import problem as make_problem
from optimorph.atomic import atomic_path

__all__ = ["train", "resolve_settings", "TrainingError"]

# Lanes x examples of the "train" evaluation subset: a fixed prefix of the training set.
TRAIN_EVAL_MAX = 2048
# A loss this many times its first value is divergence (a loss of 1e12 is no convergence).
DIVERGENCE_FACTOR = 1e4
# About 0.1 s of work on a 2-core CPU, in (lanes x examples x parameters) per block.
BLOCK_WORK = 2e9
MAX_CHUNK_BLOCKS = 256
PROGRESS_EVERY_S = 2.0
CHECKPOINT_EVERY_S = 30.0
# A checkpoint holds the carry, the series so far and the visited states: at proposal16's full
# settings a GB or more, seconds to write. A timed checkpoint waits at least this many times
# the last one's write, so writing them takes at most about 1/20 of a long run.
CHECKPOINT_COST_SHARE = 20.0


class TrainingError(ValueError):
    """Bad training arguments (steps, batch size, ...); the message names the fix."""


def train(
    problem: Any,
    optimizers: Any,
    *,
    seeds: int | Sequence[int] = 1,
    steps: int = 1000,
    batch_size: int | None = None,
    precision: Any = "fp32",
    eval_every: int | None = None,
    log_every: int = 1,
    chunk_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool | str = True,
    keep_params: bool = True,
    replicas: int = 0,
    record_params: bool = False,
    track_stalled: bool = False,
    visit_every: int | None = None,
    final_metrics_only: bool = False,
    probes: Sequence[Probe] = (),
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    checkpoint_every: float = CHECKPOINT_EVERY_S,
    on_checkpoint: Callable[[TrainResult], None] | None = None,
    devices: int | None = None,
) -> TrainResult:
    """Train every optimizer on ``problem`` for every seed, compiled end to end.

    Args:
      problem: a :class:`Problem` or a problem spec string (``"two-moons(n=500)"``).
      optimizers: one spec / optax transformation / ``(name, transformation)`` pair, a list of
        them, or a dict ``{name: transformation}`` (names label every table and figure). A
        spec with a grid, ``"adam(lr=[1e-4, 1e-3])"`` or ``"sgd(lr=logspace(1e-3, 1, 4))"``,
        runs every point (:mod:`optimorph.optimizers.grid`); ``config["grids"]`` records them.
      seeds: a count (seeds 0..n-1) or an explicit list of seeds.
      steps: number of updates per run.
      batch_size: minibatch size; None (or >= the training set) is full batch. Each epoch is a
        fresh permutation drawn from the seed's key; the last partial batch is dropped.
      precision: a precision spec or policy (``"fp32"``, ``"bf16,v=fp32"``, ``"e5m10"``, ...).
      eval_every: evaluate every this many steps (and at step 0); default ``steps // 20``.
      log_every: average the per-step training loss over windows of this many steps (memory).
      chunk_steps: steps between progress reports and checkpoints (a multiple of eval_every).
      checkpoint_dir: where to keep checkpoints; a rerun with the same arguments resumes.
      checkpoint_every: seconds between checkpoints (one is also written when each compiled
        program finishes); with ``chunk_steps`` a checkpoint follows every chunk, and with 0
        every chunk does. A timed checkpoint also waits 20 times the last one's write, so
        large checkpoints (GBs at proposal16's full settings) take at most ~5% of a run.
      progress: print a progress line on stderr; a string also prefixes each line with it
        (parallel workers sharing a terminal say which cell they are).
      keep_params: return each run's final parameters.
      replicas: k noisy replicas per run for the rounding noise floor (DESIGN.md section 3):
        each replica multiplies every stored value by (1 + u xi), xi ~ U(-1, 1), u the params
        format's unit roundoff, before it is rounded; ``replica_distance`` then holds
        ||theta_replica(t) - theta(t)||. Needs x64 (the unrounded value is formed in float64).
      record_params: return the flattened parameters at every evaluation (``trajectory``).
      track_stalled: measure per step the fraction of updates that rounding absorbed
        (``stalled``; None when not tracked).
      visit_every: record the *visited states* of each optimizer's first seed: before every
        step t that is a multiple of this (a multiple of ``log_every``), the stored params and
        optimizer state and the gradient of step t's minibatch at those params (``visited``):
        the states the one-step simulation defect replays (:mod:`optimorph.equivalence.defect`).
        Needs round to nearest without Kahan.
      final_metrics_only: compute the evaluation sets' metrics at step 0 and at the last step
        only; the evaluations between hold NaN. The evaluation probes (``record_params``'s
        trajectory among them) still run at every evaluation, and the metrics computed are
        the same bits. For runs that read only the final metric (an equivalence verdict): on
        a CNN the metrics were most of the training time.
      probes: trajectory probes (:class:`~optimorph.probes.Probe`) evaluated inside the
        compiled step; their per-step outputs land in ``result.probes`` as ``[O, S, T]``.
      on_checkpoint: called with the result so far (``config["progress"]`` says how far;
        series not yet run are NaN) whenever a checkpoint is written before the end, so a long
        run can be watched: the command line writes it to the run directory.
      divergence_factor: a run has diverged at the first step whose loss or parameters are
        NaN/inf, or whose loss exceeds this multiple of its first step's loss (default 1e4;
        None: NaN/inf only). Evaluation metrics of non-finite parameters are NaN.
      devices: split each program's lanes over this many devices (the first ``devices`` of
        ``jax.local_devices()``; on a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
        set before JAX starts makes N of them, which ``optimorph train --devices N`` does). Each
        device runs the one-device program on its share of the lanes (``engine/lanes.py``):
        about twice as fast on two cores, and every bit of a lane is that of a one-device run
        with as many lanes as each device holds (which lanes share a program can change the
        last bits: docs/sweeps.md). A lane count the devices do not divide is padded with
        repeats of the last lane, whose results are dropped. None or 1: one device.

    Returns:
      A :class:`TrainResult` with arrays indexed ``[optimizer, seed, time]``.

    >>> r = train("quadratic(dim=4, kappa=10)", ["sgd(lr=0.1)", "sgd(lr=0.05)"], steps=50,
    ...           progress=False)
    >>> r.train_loss.shape, bool(r.train_loss[0, 0, -1] < r.train_loss[0, 0, 0])
    ((2, 1, 50), True)
    """
    started = time.perf_counter()
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    # A GradientTransformation is a NamedTuple, hence a Sequence: test for it before lists.
    single = (str, OptimizerSpec, optax.GradientTransformation)
    if isinstance(optimizers, Mapping):  # {"mine": tx, ...}: named user optimizers
        optimizers = list(optimizers.items())
    is_one = (
        isinstance(optimizers, single)
        or is_named(optimizers)
        or not isinstance(optimizers, Sequence)
    )
    optimizers = [optimizers] if is_one else list(optimizers)
    grids = [expand_grid(o) for o in optimizers]  # "adam(lr=[1e-4, 1e-3])": one spec per point
    specs = [resolve(m) for g in grids for m in g.members]
    if not specs:
        raise TrainingError("give at least one optimizer")
    seed_list = _seed_list(seeds)
    policy = make_precision(precision)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(s.static_key(), []).append(i)
    lanes = len(seed_list) * max(len(g) for g in groups.values())
    split = _lane_split(devices)
    visit_every = _visit_every(visit_every, log_every, policy)
    plan = _Plan.make(
        prob, steps, batch_size, eval_every, log_every, chunk_steps, replicas, divergence_factor,
        lanes, visit_every, final_metrics_only,
    )  # fmt: skip
    if plan.replicas:
        require_x64("noise replicas (the noise floor)")
        if policy.kahan or policy.rounding != "nearest":
            raise TrainingError(
                "noise replicas need round-to-nearest without Kahan; drop 'kahan' or "
                "'rounding=stochastic' from the precision, or set replicas=0"
            )
    all_probes = _probes(probes, plan, track_stalled, record_params)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, float)):
        raise TrainingError(f"checkpoint_every must be seconds >= 0, got {checkpoint_every!r}")
    if not checkpoint_every >= 0:
        raise TrainingError(f"checkpoint_every must be seconds >= 0, got {checkpoint_every!r}")
    rounded: dict[str, list[str]] = {}  # named again if the run diverges
    for s in specs:
        check_policy(policy, s, prob.init)
        rounded[s.text] = policy.warn_hparams(numeric_hparams(s))

    data = _device_data(prob, policy)
    if split is not None:  # replicated once, for every group
        data = jax.device_put(data, split.replicated)
    shapes = jax.eval_shape(prob.init, jax.random.key(0))  # nothing is computed
    config = {
        "problem": prob.name,
        "optimizers": [s.text for s in specs],
        "optimizers_canonical": [s.canonical for s in specs],
        "seeds": seed_list,
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "precision": str(policy),
        # The memory number of each optimizer: its state's bytes per parameter under the policy.
        "state_bytes_per_param": [state_bytes_per_param(policy, s.build(), shapes) for s in specs],
        "eval_every": plan.eval_every,
        "log_every": plan.log_every,
        "replicas": plan.replicas,
        "divergence_factor": plan.divergence_factor,
        # Part of the checkpoint fingerprint: they change what the saved series hold.
        "record_params": bool(record_params),
        "track_stalled": bool(track_stalled),
        "probes": [p.name for p in all_probes],
        "problem_info": dict(prob.info),
    }
    if visit_every:  # only when set: the checkpoints of runs without it keep their fingerprint
        config["visit_every"] = visit_every
    if plan.final_metrics_only:  # as visit_every
        config["final_metrics_only"] = True
    if split is not None:  # as visit_every: a run on one device keeps its fingerprint
        config["devices"] = devices
    if any(g.is_grid for g in grids):
        config["grids"] = [
            {"spec": g.text, "members": g.members, "axes": g.axes}
            for g in grids
            if g.is_grid
        ]
    n_opt, n_seed = len(specs), len(seed_list)
    n_logs = plan.steps // plan.log_every
    n_evals = plan.steps // plan.eval_every + 1
    series: dict[str, np.ndarray] = {}
    diverged = np.full((n_opt, n_seed), -1, np.int64)
    final_params: list[Any] = [None] * n_opt
    visited: list[Any] = [None] * n_opt
    earlier = 0.0  # training time spent by earlier processes on resumed groups
    def result(series, diverged, final_params, wall) -> TrainResult:
        evals = {k[5:]: v for k, v in series.items() if k.startswith("eval:")}
        builtin = {"loss", "stalled", "replica_distance", "trajectory"}
        return TrainResult(
            optimizers=[s.text for s in specs],
            seeds=seed_list,
            steps=np.arange(1, n_logs + 1) * plan.log_every,
            train_loss=series["loss"],
            eval_steps=np.arange(n_evals) * plan.eval_every,
            evals=evals,
            diverged_at=diverged,
            final_params=final_params,
            wall_time=wall,
            config=config,
            stalled=series.get("stalled"),
            replica_distance=series.get("replica_distance"),
            trajectory=series.get("trajectory"),
            probes={k: v for k, v in series.items()
                    if not k.startswith("eval:") and k not in builtin},  # fmt: skip
            rounded_hparams={k: v for k, v in rounded.items() if v},
            visited=visited if visit_every else None,
            visit_steps=np.arange(0, plan.steps, visit_every) if visit_every else None,
        )

    def place(target, out, members):
        for k, i in enumerate(members):
            for name, arr in out.items():
                if name not in target:
                    target[name] = np.full((n_opt, *arr.shape[1:]), np.nan, arr.dtype)
                target[name][i] = arr[k]

    with interrupts.deferred():  # Ctrl-C takes effect between chunks, after a checkpoint
        for g, members in enumerate(groups.values()):
            group_specs = [specs[i] for i in members]
            live = None
            if on_checkpoint is not None:

                def live(out, done, group_div, g=g, members=members):
                    partial = {k: v.copy() for k, v in series.items()}
                    place(partial, out, members)
                    div = diverged.copy()
                    div[members] = group_div
                    progress_ = {"done": int(done), "steps": plan.steps, "group": g + 1,
                                 "groups": len(groups)}  # fmt: skip
                    snapshot = result(partial, div, [], time.perf_counter() - started + earlier)
                    on_checkpoint(dataclasses.replace(
                        snapshot, config={**config, "progress": progress_}))  # fmt: skip

            ckpt = None
            if checkpoint_dir is not None:
                tag = _fingerprint(config, [[s.canonical, plan.block] for s in group_specs])
                ckpt = Path(checkpoint_dir) / f"checkpoint-{tag}.npz"
            names = ", ".join(s.text for s in group_specs[:3])
            if len(group_specs) > 3:  # a grid: the line stays readable
                names += f", ... ({len(group_specs)} configurations, one program)"
            label = f"train {names}" + (f" [{g + 1}/{len(groups)}]" if len(groups) > 1 else "")
            if isinstance(progress, str):  # a worker's tag: several processes share one terminal
                label = f"{progress}: {label}"
            bar = Progress(plan.steps, label, enabled=bool(progress), every_s=PROGRESS_EVERY_S)
            out, group_div, params, group_earlier, group_visits = _run_group(
                prob, group_specs, seed_list, policy, plan, all_probes, data, ckpt, bar,
                float(checkpoint_every), live, visit_every, split,
            )  # fmt: skip
            earlier += group_earlier
            place(series, out, members)
            for k, i in enumerate(members):
                diverged[i] = group_div[k]
                visited[i] = group_visits[k] if visit_every else None
                final_params[i] = jax.tree.map(lambda a, k=k: a[k], params) if keep_params else None
    wall = time.perf_counter() - started + earlier
    return result(series, diverged, final_params if keep_params else [], wall)


def resolve_settings(
    problem: Any,
    *,
    steps: int,
    batch_size: int | None = None,
    eval_every: int | None = None,
    log_every: int = 1,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
) -> dict[str, Any]:
    """The run settings ``train`` would use on ``problem``, checked and with defaults filled.

    What a sweep records per cell: two spellings of one run (``batch_size`` omitted or equal to
    the training set, ``eval_every`` omitted or its default) resolve to the same values.

    Returns:
      ``{"steps", "batch_size", "eval_every", "log_every", "divergence_factor"}``; the divergence
      factor is None when only NaN/inf count.

    Raises:
      TrainingError: the message names the setting and the fix.

    >>> resolve_settings("quadratic(dim=4)", steps=100)["eval_every"]
    5
    """
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    plan = _Plan.make(prob, steps, batch_size, eval_every, log_every, None, 0, divergence_factor)
    return {
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "eval_every": plan.eval_every,
        "log_every": plan.log_every,
        "divergence_factor": None if math.isinf(plan.divergence_factor) else plan.divergence_factor,
    }


def _seed_list(seeds: Any) -> list[int]:
    """Seeds 0..n-1 for a count, else the list given: distinct integers in 0..2^32-1 (each
    seeds one PRNG key; a repeated seed would be the same run twice, counted as two)."""
    if isinstance(seeds, bool):
        raise TrainingError(f"seeds must be a count or a list of integers, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise TrainingError(f"give at least one seed (seeds=N or a list), got seeds={seeds}")
        return list(range(seeds))
    try:
        seed_list = [operator.index(s) for s in seeds]
    except TypeError:
        raise TrainingError(f"seeds must be a count or a list of integers, got {seeds!r}") from None
    if not seed_list:
        raise TrainingError("give at least one seed (seeds=N or a list)")
    bad = [s for s in seed_list if not 0 <= s < 2**32]
    if bad:
        raise TrainingError(f"seeds must be integers in 0..2^32-1, got {bad}")
    repeated = sorted({s for s in seed_list if seed_list.count(s) > 1})
    if repeated:
        raise TrainingError(f"seeds must be distinct; {repeated} given more than once")
    return seed_list


def _probes(probes, plan, track_stalled, record_params) -> tuple[Probe, ...]:
    """The user's probes plus the built-in ones the flags ask for; output names must be unique."""
    chosen = list(probes or ())
    if track_stalled:
        chosen.append(builtin_probes.stalled())
    if plan.replicas:
        chosen.append(builtin_probes.replica_distance())
    if record_params:
        chosen.append(builtin_probes.trajectory())
    seen: set[str] = {"loss"}
    for p in chosen:
        if not isinstance(p, Probe):
            raise TrainingError(f"probes must be Probe objects, got {type(p).__name__}")
        clash = seen.intersection(p.outputs)
        if clash:
            raise TrainingError(f"probe {p.name!r} outputs {sorted(clash)} twice; rename one")
        seen.update(p.outputs)
    return tuple(chosen)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Validated step, batch, evaluation and chunk sizes, and what the run records.

    The compiled loop runs *blocks* of ``block`` steps (a divisor of ``eval_every`` holding whole
    ``log_every`` windows, sized to about 0.1 s of work); a chunk is a number of blocks chosen
    at run time (``chunk_blocks``, or adapted to take about :data:`PROGRESS_EVERY_S`), so progress
    and checkpoints come every few seconds whatever the evaluation interval.
    """

    steps: int
    order: BatchOrder
    eval_every: int
    log_every: int
    block: int
    chunk_blocks: int | None  # fixed by chunk_steps, else None: adapted to the measured speed
    max_blocks: int  # the compiled chunk's buffer length (the most blocks one chunk can run)
    replicas: int
    divergence_factor: float
    visit_every: int | None = None  # the chunk keeps its first step's gradient (visited states)
    final_metrics_only: bool = False  # metrics at step 0 and the last step; probes at each eval

    @classmethod
    def make(cls, prob, steps, batch_size, eval_every, log_every, chunk_steps, replicas,
             divergence_factor=DIVERGENCE_FACTOR, lanes=1, visit_every=None,
             final_metrics_only=False) -> "_Plan":  # fmt: skip
        steps = _positive_int(steps, "steps")
        n = prob.n_train
        if batch_size is not None:
            batch_size = _positive_int(batch_size, "batch_size")
        full = prob.full_batch or batch_size is None or batch_size >= n
        log_every = _positive_int(log_every, "log_every")
        if eval_every is None:
            eval_every = _default_eval_every(steps, log_every)
        eval_every = _positive_int(eval_every, "eval_every")
        if steps % eval_every:
            raise TrainingError(
                f"eval_every={eval_every} must divide steps={steps}; e.g. eval_every="
                f"{math.gcd(steps, eval_every)}"
            )
        if eval_every % log_every:
            raise TrainingError(f"log_every={log_every} must divide eval_every={eval_every}")
        batch = n if full else batch_size
        # Blocks end at evaluations and at visited steps: chunks are whole blocks.
        period = math.gcd(eval_every, visit_every) if visit_every else eval_every
        block = _block_steps(period, log_every, lanes * batch * _n_params(prob))
        total_blocks = steps // block
        if chunk_steps is None:
            chunk_blocks, max_blocks = None, min(total_blocks, MAX_CHUNK_BLOCKS)
        else:
            chunk_steps = _positive_int(chunk_steps, "chunk_steps")
            chunk_blocks = min(max(1, chunk_steps // block), total_blocks)
            max_blocks = chunk_blocks
        return cls(
            steps=steps,
            order=BatchOrder(n, batch),
            eval_every=eval_every,
            log_every=log_every,
            block=block,
            chunk_blocks=chunk_blocks,
            max_blocks=max_blocks,
            replicas=_non_negative_int(replicas, "replicas"),
            divergence_factor=_factor(divergence_factor),
            visit_every=visit_every,
            final_metrics_only=bool(final_metrics_only),
        )

    @property
    def batch_size(self) -> int:
        return self.order.batch_size


def _n_params(prob: Problem) -> int:
    return max(1, n_params(prob.init))


def _block_steps(eval_every: int, log_every: int, work_per_step: float) -> int:
    """The largest divisor of ``eval_every`` that is a multiple of ``log_every`` and holds at
    most :data:`BLOCK_WORK` of work (at least ``log_every`` steps).

    >>> _block_steps(1000, 1, 1e6), _block_steps(1000, 10, 1e9), _block_steps(7, 7, 1e12)
    (1000, 10, 7)
    """
    target = max(BLOCK_WORK / max(work_per_step, 1.0), 1.0)
    divisors = [d for d in range(log_every, eval_every + 1, log_every) if eval_every % d == 0]
    fitting = [d for d in divisors if d <= target]
    return max(fitting) if fitting else log_every


def _factor(value: Any) -> float:
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1:
        raise TrainingError(
            f"divergence_factor must be a number > 1 (or None to flag NaN/inf only), got {value!r}"
        )
    return float(value)


def _default_eval_every(steps: int, log_every: int) -> int:
    """The divisor of ``steps`` nearest (in log scale) to steps / 20: about 20 evaluations.

    It must divide ``steps`` and be a multiple of ``log_every``; for a prime step count this is
    ``steps`` (one evaluation at the end) rather than an evaluation after every step.

    >>> _default_eval_every(1000, 1), _default_eval_every(1009, 1), _default_eval_every(1000, 8)
    (50, 1009, 40)
    """
    target = max(steps / 20, 1.0)
    divisors = [d for d in range(1, math.isqrt(steps) + 1) if steps % d == 0]
    divisors = [d for d in {*divisors, *(steps // d for d in divisors)} if d % log_every == 0]
    if not divisors:
        raise TrainingError(f"log_every={log_every} must divide steps={steps}")
    return min(divisors, key=lambda d: (abs(math.log(d / target)), -d))


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise TrainingError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise TrainingError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _device_data(prob: Problem, policy) -> dict:
    """Training and evaluation arrays on the device, floats in the compute dtype."""

    def put(arrays):
        return tuple(
            jnp.asarray(a, policy.compute_dtype)
            if np.issubdtype(np.asarray(a).dtype, np.floating)
            else jnp.asarray(a)
            for a in arrays
        )

    train = put(prob.train)
    m = min(prob.n_train, TRAIN_EVAL_MAX)
    eval_sets = {"train": tuple(a[:m] for a in train)}
    eval_sets.update({name: put(batch) for name, batch in prob.evals.items()})
    return {"train": train, "evals": eval_sets}


def _run_group(prob, specs, seeds, policy, plan, probes, data, ckpt, bar, ckpt_every, live,
               visit_every=None, split=None):  # fmt: skip
    """Train one compiled program: lanes = len(specs) x len(seeds).

    Returns ``(series, diverged [C, S], final params [C, S, ...], earlier wall time, visited)``
    where ``visited`` holds, per configuration, its first seed's visited states stacked along
    a leading visit axis (see :func:`train`'s ``visit_every``; empty without it), and
    ``series`` maps ``loss`` and each step probe's outputs to ``[C, S, T]``,
    ``eval:<set>/<metric>`` to ``[C, S, E]`` and each eval probe's outputs to ``[C, S, E, ...]``,
    and the earlier wall time is what processes before a resume spent on this group.
    ``live(series so far, steps done, diverged)``, when given, follows every checkpoint but
    the last (the series padded with NaN to their full length). ``split`` (from
    :func:`_lane_split`) runs the programs on several devices, each on its share of the lanes.
    """
    started = time.perf_counter()
    n_cfg, n_seed = len(specs), len(seeds)
    lanes = n_cfg * n_seed
    hvals = lane_hparams(specs, policy, n_seed)
    root = jax.vmap(seed_key)(jnp.tile(jnp.asarray(seeds, jnp.uint32), n_cfg))
    init_all, eval_all, chunk_all = _programs(prob, specs[0], policy, plan, probes)
    if split is not None:  # each device runs the single-device programs on its lanes
        # Lanes that do not split evenly: the last one repeated, its results dropped below.
        root, hvals = jax.device_put(split.padded((root, hvals), lanes), split.lanes)
        init_all = split.program(init_all, (0, 0))
        eval_all = split.program(eval_all, (0, None))
        chunk_all = split.program(chunk_all, (0, 0, None, None, None))

    carry = init_all(root, hvals)
    visits: list = []  # per visit: (params, state, grads), each configuration's first seed
    template = _visit_template(carry, lanes, n_seed) if visit_every and ckpt is not None else None
    resumed = _load_checkpoint(ckpt, carry, template)
    if resumed is not None:
        carry, done, parts, earlier, visits = resumed
        bar.advance(done, "(resumed)")
    else:
        done, earlier = 0, 0.0
        first = eval_all(_eval_view(carry), data)  # evaluation at step 0
        parts = {k: [np.asarray(v)[:lanes].reshape(lanes, 1, *np.shape(v)[1:])]
                 for k, v in first.items()}  # fmt: skip
    n = plan.chunk_blocks or 1  # adaptive: one block first (it includes the compilation)
    compiled, last_save, save_cost = False, time.perf_counter(), 0.0
    while done < plan.steps:
        n = min(n, (plan.steps - done) // plan.block, plan.max_blocks)
        visiting = bool(visit_every) and done == len(visits) * visit_every
        if visiting:  # a visited step: the state before it now, its gradient after the chunk
            before = _first_seeds((carry["run"].params, carry["run"].state), lanes, n_seed)
        if visit_every:  # chunks end at visited steps
            n = min(n, (visit_every - done % visit_every) // plan.block)
        tick = time.perf_counter()
        t0 = jnp.asarray(done, jnp.int32)
        carry, per_step, evals = chunk_all(carry, hvals, data, t0, jnp.asarray(n, jnp.int32))
        if visiting:
            visits.append((*before, _first_seeds(carry["visit_grads"], lanes, n_seed)))
        n_evals = (done + n * plan.block) // plan.eval_every - done // plan.eval_every
        for k, v in per_step.items():  # [lanes, max_blocks, windows]: flatten time
            parts.setdefault(k, []).append(np.asarray(v)[:lanes, :n].reshape(lanes, -1))
        for k, v in evals.items():  # [lanes, max evals, ...]
            # A copy: a slice would keep the whole buffer (every evaluation slot of the chunk,
            # parameter trajectories included) alive per chunk; with 2-s chunks of a 269k
            # parameter MLP that grew a run past 10 GB.
            parts.setdefault(k, []).append(np.array(np.asarray(v)[:lanes, :n_evals]))
        elapsed = time.perf_counter() - tick
        done += n * plan.block
        now = time.perf_counter()
        stop = interrupts.requested()  # Ctrl-C during this chunk: checkpoint, then stop
        due = now - last_save >= (max(ckpt_every, CHECKPOINT_COST_SHARE * save_cost)
                                  if ckpt_every > 0 else 0)  # fmt: skip
        if plan.chunk_blocks or done >= plan.steps or due or stop:
            _save_checkpoint(ckpt, carry, done, parts, earlier + now - started, visits)
            if live is not None and done < plan.steps and not stop:
                div = np.asarray(carry["diverged"])[:lanes].reshape(n_cfg, n_seed)
                live(_padded(parts, per_step, plan, n_cfg, n_seed), done, div)
            last_save = time.perf_counter()
            save_cost = last_save - now  # the run directory's partial result written too
        bar.advance(n * plan.block, "" if compiled else f"(compiled and ran in {elapsed:.1f}s)",
                    warmup=not compiled)  # fmt: skip
        interrupts.raise_if_requested()
        if plan.chunk_blocks is None:
            # The first chunk's time is mostly compilation: try 2 blocks, then aim for a chunk
            # every PROGRESS_EVERY_S seconds.
            per_block = elapsed / n
            n = 2 if not compiled else max(1, int(PROGRESS_EVERY_S / max(per_block, 1e-9)))
        compiled = True

    series = _joined(parts, n_cfg, n_seed)
    div = np.asarray(carry["diverged"])[:lanes].reshape(n_cfg, n_seed)
    params = jax.tree.map(
        lambda a: np.asarray(a)[:lanes].reshape(n_cfg, n_seed, *a.shape[1:]), carry["run"].params
    )
    return series, div, params, earlier, _stacked_visits(visits, n_cfg)


def _joined(parts: dict, n_cfg: int, n_seed: int) -> dict:
    """Chunks of each series joined along time, lanes split into [C, S, ...]."""
    series = {}
    for k, v in parts.items():
        joined = np.concatenate(v, axis=1)
        series[k] = joined.reshape(n_cfg, n_seed, *joined.shape[1:])
    return series


def _padded(parts: dict, step_keys, plan, n_cfg: int, n_seed: int) -> dict:
    """The series so far, NaN-padded along time to the run's length (per-step series to
    ``steps // log_every`` windows, evaluations to ``steps // eval_every + 1``)."""
    out = {}
    for k, v in _joined(parts, n_cfg, n_seed).items():
        full = plan.steps // plan.log_every if k in step_keys else plan.steps // plan.eval_every + 1
        pad = np.full((*v.shape[:2], full - v.shape[2], *v.shape[3:]), np.nan)
        out[k] = np.concatenate([v, pad.astype(v.dtype, copy=False)], axis=2)
    return out


# Compiled programs are kept across calls (a benchmark or a sweep calls train repeatedly); the key
# holds everything the traced functions close over, and the entry holds the problem whose id is
# in the key (so the id cannot be reused while cached). Data arrays are arguments, not constants.
_PROGRAMS: dict = {}
_PROGRAMS_MAX = 32


def _programs(prob, template, policy, plan, probes):
    key = (id(prob), template.static_key(), str(policy), plan, tuple(id(p) for p in probes))
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= _PROGRAMS_MAX:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = ((prob, probes), _build_programs(prob, template, policy, plan, probes))
    return _PROGRAMS[key][1]


_PROBE_SALT = 0x70726F62  # "prob": the probes' key, apart from the run's four keys


def _build_programs(prob, template, policy, plan, probes):
    """The vmapped init, evaluation and chunk programs of one group (one lane = one run).

    A lane's carry holds the run (replica 0, computed exactly as without replicas), its noisy
    replicas (leading axis k), the probes' states, the first divergence step and the keys.
    """
    order = plan.order
    step_probes = [p for p in probes if p.when == "step"]
    eval_probes = [p for p in probes if p.when == "eval"]
    noise_scale = jnp.asarray(policy.unit_roundoff, jnp.float64) if plan.replicas else None

    def init_lane(key, hv):
        keys = run_keys(key)
        run = start(prob.init, template.build(hv), policy, keys)
        carry = {
            "run": run,
            "diverged": jnp.asarray(-1, jnp.int32),
            "first_loss": jnp.asarray(jnp.nan, jnp.result_type(float)),
            "data_key": keys.data,
            "sr_key": keys.rounding,
            "probe_key": jax.random.fold_in(key, _PROBE_SALT),
            "probes": [p.init(policy.to_compute(run.params)) for p in step_probes],
        }
        if plan.visit_every:  # the gradient of the chunk's first step (a visited step)
            carry["visit_grads"] = jax.tree.map(
                lambda p: jnp.zeros(p.shape, policy.grads.storage_dtype), run.params
            )
        if plan.replicas:
            carry["replicas"] = jax.tree.map(
                lambda x: jnp.broadcast_to(x, (plan.replicas, *x.shape)), run
            )
            # Per replica a 32-bit seed for the noise hash (see step.Noise).
            carry["noise_seed"] = jax.random.bits(keys.noise, (plan.replicas,), jnp.uint32)
        return carry

    def one_step(tx, run, batch, t, sr_key, noise):
        loss, grads, params_c = gradient(
            prob.loss, policy, run.params, batch, rounding_key=sr_key, t=t
        )
        extra = {"value": loss, "grad": grads, "value_fn": lambda p: prob.loss(p, batch)}
        new = apply_update(
            tx, policy, run.params, run.state, run.compensation, grads,
            params_c=params_c, rounding_key=sr_key, t=t, noise=noise, extra_args=extra,
        )  # fmt: skip
        return Start(new.params, new.state, new.compensation), (loss, grads, params_c, new)

    def replica_step(tx, hv, rep, seed, batch, t, sr_key):
        # Replicas need round-to-nearest; a format that draws its own random numbers (grads in
        # mxfp4(rounding=stochastic), say) draws the run's: common random numbers, so the
        # replicas' spread is the rounding noise floor, not a second stochastic rounding.
        return one_step(tx, rep, batch, t, sr_key, Noise(seed, noise_scale))[0]

    replicas_step = jax.vmap(replica_step, in_axes=(None, None, 0, 0, None, None, None))

    evaluate_lane = _evaluator(prob, policy, tuple(eval_probes))
    if plan.final_metrics_only:
        probes_only = _evaluator(prob, policy, tuple(eval_probes), metrics=False)
        everything = evaluate_lane

        def evaluate_lane(view, data):  # t is the same in every lane: a real branch
            last = view["t"] == plan.steps
            return jax.lax.cond(last, everything, probes_only, view, data)

    def chunk_lane(carry, hv, data, t0, n_blocks):
        # Re-derive the current epoch's permutation at each chunk start (so nothing but the carry
        # needs checkpointing), then loop over n_blocks blocks of plan.block steps (n_blocks is
        # traced: one compiled program serves every chunk length). Outputs go to fixed buffers:
        # per-step series per block, evaluations at the blocks that end an evaluation interval.
        tx = template.build(hv)
        # The probes see every hyperparameter: the traced ones (hv) and the fixed flags.
        fixed = {k: x for k, x in getattr(template, "values", {}).items()
                 if isinstance(x, (bool, int, float))}  # fmt: skip
        if order.full_batch:
            perm0 = jnp.zeros((0,), jnp.int32)  # unused
        else:
            perm0 = order.permutation(carry["data_key"], t0 // order.steps_per_epoch)

        def one(state, t):
            carry, perm = state
            perm = order.advance(carry["data_key"], perm, t)
            batch = order.batch(data["train"], perm, t)
            run, (loss, grads, params_c, new) = one_step(
                tx, carry["run"], batch, t, carry["sr_key"], None
            )
            carry = dict(carry, run=run)
            if plan.visit_every:  # t and t0 are the same in every lane: a real branch
                carry["visit_grads"] = jax.lax.cond(
                    t == t0, lambda: grads, lambda: carry["visit_grads"]
                )
            if plan.replicas:
                carry["replicas"] = replicas_step(
                    tx, hv, carry["replicas"], carry["noise_seed"], batch, t, carry["sr_key"]
                )
            first = jnp.where(t == 0, loss, carry["first_loss"]).astype(carry["first_loss"].dtype)
            carry["first_loss"] = first
            # NaN compares false: a NaN first loss leaves only the NaN/inf test.
            blown = jnp.abs(loss) > plan.divergence_factor * jnp.abs(first)
            bad = ~jnp.isfinite(loss) | ~_all_finite(run.params) | blown
            first_bad = (carry["diverged"] < 0) & bad
            carry["diverged"] = jnp.where(first_bad, (t + 1).astype(jnp.int32), carry["diverged"])
            outputs = {"loss": loss}
            if step_probes:
                values = StepValues(
                    t=t, params=params_c, new_params=run.params, grads=grads, loss=loss,
                    batch=batch, updates=new.updates, state=run.state,
                    lr=learning_rate(template, hv, t), loss_fn=prob.loss,
                    eval_batch=data["evals"]["train"],
                    key=jax.random.fold_in(carry["probe_key"], t), hparams={**fixed, **hv},
                )  # fmt: skip
                states = []
                for probe, pstate in zip(step_probes, carry["probes"], strict=True):
                    pstate, out = probe.update(values, pstate)
                    states.append(pstate)
                    outputs.update(out)
                carry["probes"] = states
            return (carry, perm), outputs

        reducers = {"loss": REDUCERS["mean"]}
        reducers.update({o: REDUCERS[p.reduce] for p in step_probes for o in p.outputs})

        def block(state, t_start):
            t = t_start + jnp.arange(plan.block, dtype=jnp.int32)
            (carry, perm), per_step = jax.lax.scan(one, state, t)
            windows = {k: reducers[k](v.reshape(-1, plan.log_every)) for k, v in per_step.items()}
            return (carry, perm), windows

        step_shapes = jax.eval_shape(lambda s, t: block(s, t)[1], (carry, perm0), t0)
        eval_shapes = jax.eval_shape(evaluate_lane, dict(_eval_view(carry), t=t0), data)
        n_eval_slots = min(plan.max_blocks, plan.max_blocks * plan.block // plan.eval_every + 1)
        step_buf = {
            k: jnp.zeros((plan.max_blocks, *v.shape), v.dtype) for k, v in step_shapes.items()
        }
        eval_buf = {
            k: jnp.full((n_eval_slots, *v.shape), jnp.nan, v.dtype) for k, v in eval_shapes.items()
        }
        evals_before = t0 // plan.eval_every

        def body(b, loop):
            state, (step_buf, eval_buf) = loop
            t_end = t0 + (b + 1) * plan.block
            state, windows = block(state, t0 + b * plan.block)
            step_buf = {k: step_buf[k].at[b].set(windows[k]) for k in step_buf}

            def record(buf):
                slot = t_end // plan.eval_every - evals_before - 1
                out = evaluate_lane(dict(_eval_view(state[0]), t=t_end), data)
                return {k: buf[k].at[slot].set(out[k]) for k in buf}

            # t_end is the same in every lane: a real branch under vmap, not a select.
            eval_buf = jax.lax.cond(t_end % plan.eval_every == 0, record, lambda b: b, eval_buf)
            return state, (step_buf, eval_buf)

        (carry, _), (step_buf, eval_buf) = jax.lax.fori_loop(
            0, n_blocks, body, ((carry, perm0), (step_buf, eval_buf))
        )
        return carry, step_buf, eval_buf

    init_all = jax.jit(jax.vmap(init_lane))
    eval_all = _eval_program(prob, policy, tuple(eval_probes))
    chunk_all = jax.jit(jax.vmap(chunk_lane, in_axes=(0, 0, None, None, None)), donate_argnums=(0,))
    return init_all, eval_all, chunk_all


def _eval_view(carry) -> dict:
    """What an evaluation reads from a lane's carry: the same structure for every optimizer
    (no optimizer state), so one compiled evaluation serves every group of a run."""
    view = {"params": carry["run"].params, "probe_key": carry["probe_key"]}
    if "replicas" in carry:
        view["replica_params"] = carry["replicas"].params
    return view


def _evaluator(prob, policy, eval_probes: tuple, metrics: bool = True):
    """A lane's evaluation of :func:`_eval_view`: every metric on every evaluation set and
    the evaluation probes' outputs (``metrics=False``: the metrics NaN, not computed)."""

    def evaluate_lane(view, data):
        params_c = policy.to_compute(view["params"])
        out = {}
        if metrics:
            finite = _all_finite(params_c)  # a model with NaN weights has no accuracy: NaN
        for set_name, batch in data["evals"].items():
            if not metrics:  # the same names and shapes, nothing computed
                for metric, shape in jax.eval_shape(prob.evaluate, params_c, batch).items():
                    out[f"eval:{set_name}/{metric}"] = jnp.full(shape.shape, jnp.nan)
                continue
            for metric, value in prob.evaluate(params_c, batch).items():
                value = jnp.asarray(value, jnp.result_type(float))
                out[f"eval:{set_name}/{metric}"] = jnp.where(finite, value, jnp.nan)
        if eval_probes:
            values = StepValues(
                t=None, params=view["params"], new_params=view["params"], grads=None,
                loss=None, batch=None, updates=None, state=None, lr=None, loss_fn=prob.loss,
                eval_batch=data["evals"]["train"], key=view["probe_key"],
                replica_params=view.get("replica_params"),
            )  # fmt: skip
            for probe in eval_probes:
                out.update(probe.update(values, ())[1])
        return out

    return evaluate_lane


_EVALS: dict = {}


def _eval_program(prob, policy, eval_probes: tuple):
    """The vmapped evaluation at step 0, compiled once per problem, policy and probes (not
    per group: it reads no optimizer state)."""
    key = (id(prob), str(policy), tuple(id(p) for p in eval_probes))
    if key not in _EVALS:
        if len(_EVALS) >= _PROGRAMS_MAX:
            _EVALS.pop(next(iter(_EVALS)))
        program = jax.jit(jax.vmap(_evaluator(prob, policy, eval_probes), in_axes=(0, None)))
        _EVALS[key] = ((prob, eval_probes), program)
    return _EVALS[key][1]


def _lane_split(devices: int | None) -> LaneSplit | None:
    """The lanes split over the first ``devices`` devices, or None for one device."""
    if devices is None:
        return None
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise TrainingError(f"devices must be a whole number >= 1, got {devices!r}")
    if devices == 1:
        return None
    available = jax.local_devices()
    if len(available) < devices:
        raise TrainingError(
            f"devices={devices} but JAX sees {len(available)} "
            f"({available[0].platform}); on a CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts "
            f"(`optimorph train --devices {devices}` does), or use fewer devices"
        )
    return LaneSplit(available[:devices])


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ---------------------------------------------------------------- visited states


def _visit_every(value, log_every: int, policy) -> int | None:
    """``visit_every`` checked: whole ``log_every`` windows (blocks, and so chunks, then end at
    visited steps), for a policy without Kahan (a visit records no compensation, so U_p could
    not be replayed; stochastic rounding replays from the seed's key and the step)."""
    if value is None:
        return None
    every = _positive_int(value, "visit_every")
    if every % _positive_int(log_every, "log_every"):
        raise TrainingError(f"visit_every={every} must be a multiple of log_every={log_every}")
    if policy.kahan:
        raise TrainingError(
            "visited states replay one rounded step, and a visit records no Kahan "
            "compensation; drop 'kahan' from the precision, or visit_every"
        )
    return every


def _first_seeds(tree, lanes: int, n_seed: int):
    """Each configuration's first-seed lane (lanes are configuration-major; a split run's
    padding after ``lanes`` left out), copied to the host: the next chunk donates the carry's
    buffers, which a view would share."""
    return jax.tree.map(lambda x: np.array(jax.device_get(x)[:lanes:n_seed]), tree)


def _visit_template(carry, lanes: int, n_seed: int):
    """The shape of one recorded visit: (params, state, grads) of every configuration."""
    run = carry["run"]
    shapes = jax.eval_shape(lambda t: jax.tree.map(lambda x: x[:lanes:n_seed], t),
                            (run.params, run.state, carry["visit_grads"]))  # fmt: skip
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def _stacked_visits(visits: list, n_cfg: int) -> list:
    """Per configuration, its visits stacked along a leading axis, as device arrays."""
    if not visits:
        return []
    return [jax.device_put(jax.tree.map(lambda *v, c=c: np.stack([x[c] for x in v]), *visits))
            for c in range(n_cfg)]  # fmt: skip


# ---------------------------------------------------------------- checkpoints


def _fingerprint(config: dict, group: list[str]) -> str:
    text = json.dumps({"config": config, "group": group}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_checkpoint(path, carry, done, parts, wall, visits=()) -> None:
    """Leaves of the carry, the steps done, the series so far, the training time spent on
    them (all processes) and the visited states recorded so far, atomically."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _leaf_arrays("carry_", carry)
    for k, visit in enumerate(visits):
        arrays.update(_leaf_arrays(f"visit_{k}_", visit))
    arrays["done"] = np.asarray(done)
    arrays["wall"] = np.asarray(wall, np.float64)
    for key, chunks in parts.items():
        arrays[f"series::{key}"] = np.concatenate(chunks, axis=1)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _leaf_arrays(prefix: str, tree) -> dict:
    """``{prefix + i: leaf i}`` as NumPy arrays (PRNG keys as their key data)."""
    return {f"{prefix}{i}": np.asarray(_key_data(x)) for i, x in enumerate(jax.tree.leaves(tree))}


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(x):
    return jax.random.key_data(x) if _is_key(x) else x


def _load_checkpoint(path, template, visit_template=None):
    """The saved carry (shaped like ``template``, a fresh init), series and visited states
    (shaped like ``visit_template``), or None."""
    if path is None or not path.exists():
        return None
    try:
        # Our own file handle: np.load leaks its own when the zip is truncated.
        with open(path, "rb") as f, np.load(f) as z:
            carry = _tree_from(z, "carry_", template)
            visits = []
            while visit_template is not None and f"visit_{len(visits)}_0" in z.files:
                visits.append(_tree_from(z, f"visit_{len(visits)}_", visit_template))
            parts = {k[8:]: [z[k]] for k in z.files if k.startswith("series::")}
            return carry, int(z["done"]), parts, float(z["wall"]), visits
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # truncated
        raise TrainingError(
            f"checkpoint {path} is damaged ({err}); delete it to start this run over "
            "(the other checkpoints in its folder are kept)"
        ) from None


def _tree_from(z, prefix: str, template):
    """The tree saved by :func:`_leaf_arrays` under ``prefix``, shaped like ``template``."""
    leaves, treedef = jax.tree.flatten(template)
    restored = []
    for i, like in enumerate(leaves):
        saved = jnp.asarray(z[f"{prefix}{i}"])
        if saved.shape != jnp.shape(like) and not _is_key(like):
            raise ValueError(f"entry {prefix}{i} has shape {saved.shape}, not {jnp.shape(like)}")
        restored.append(jax.random.wrap_key_data(saved) if _is_key(like) else saved)
    return jax.tree.unflatten(treedef, restored)
