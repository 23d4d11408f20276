"""The compiled trainer: jit + lax.scan over steps, vmap over (hyperparameters x seeds).

Every (optimizer, seed) run of one *program* (optimizers that differ only in numbers: learning
rates, betas, schedule parameters) is one lane of a vmapped, scanned program compiled once.
Optimizers that differ in kind or flags get one program each. The loop runs in chunks; between
chunks a progress line advances and, with ``checkpoint_dir``, a checkpoint is written atomically so
an interrupted run resumes where it stopped.

Seeds are shared across optimizers: seed s gives the same initial parameters and the same batch
sequence to every optimizer, so comparisons over seeds are paired.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
    start,
)
from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.precision import require_x64
from optimorph.precision import precision as make_precision
from optimorph.probes import Probe, StepValues
from optimorph.probes import builtin as builtin_probes
from optimorph.probes.base import REDUCERS
from optimorph.problems import Problem
from optimorph.problems import problem as make_problem
from optimorph.results.atomic import atomic_path

__all__ = ["train", "TrainingError"]

# Lanes x examples of the "train" evaluation subset: a fixed prefix of the training set.
TRAIN_EVAL_MAX = 2048
# A loss this many times its first value is divergence (a loss of 1e12 is no convergence).
DIVERGENCE_FACTOR = 1e4


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
    progress: bool = True,
    keep_params: bool = True,
    replicas: int = 0,
    record_params: bool = False,
    track_stalled: bool = False,
    probes: Sequence[Probe] = (),
    divergence_factor: float | None = DIVERGENCE_FACTOR,
) -> TrainResult:
    """Train every optimizer on ``problem`` for every seed, compiled end to end.

    Args:
      problem: a :class:`Problem` or a problem spec string (``"two-moons(n=500)"``).
      optimizers: one spec / optax transformation, or a list of them.
      seeds: a count (seeds 0..n-1) or an explicit list of seeds.
      steps: number of updates per run.
      batch_size: minibatch size; None (or >= the training set) is full batch. Each epoch is a
        fresh permutation drawn from the seed's key; the last partial batch is dropped.
      precision: a precision spec or policy (``"fp32"``, ``"bf16,v=fp32"``, ``"e5m10"``, ...).
      eval_every: evaluate every this many steps (and at step 0); default ``steps // 20``.
      log_every: average the per-step training loss over windows of this many steps (memory).
      chunk_steps: steps between progress reports and checkpoints (a multiple of eval_every).
      checkpoint_dir: where to keep checkpoints; a rerun with the same arguments resumes.
      progress: print a progress line on stderr.
      keep_params: return each run's final parameters.
      replicas: k noisy replicas per run for the rounding noise floor (DESIGN.md section 3):
        each replica multiplies every stored value by (1 + u xi), xi ~ U(-1, 1), u the params
        format's unit roundoff, before it is rounded; ``replica_distance`` then holds
        ||theta_replica(t) - theta(t)||. Needs x64 (the unrounded value is formed in float64).
      record_params: return the flattened parameters at every evaluation (``trajectory``).
      track_stalled: measure per step the fraction of updates that rounding absorbed
        (``stalled``; None when not tracked).
      probes: trajectory probes (:class:`~optimorph.probes.Probe`) evaluated inside the
        compiled step; their per-step outputs land in ``result.probes`` as ``[O, S, T]``.
      divergence_factor: a run has diverged at the first step whose loss or parameters are
        NaN/inf, or whose loss exceeds this multiple of its first step's loss (default 1e4;
        None: NaN/inf only). Evaluation metrics of non-finite parameters are NaN.

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
    is_one = isinstance(optimizers, single) or not isinstance(optimizers, Sequence)
    optimizers = [optimizers] if is_one else list(optimizers)
    specs = [resolve(o) for o in optimizers]
    if not specs:
        raise TrainingError("give at least one optimizer")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise TrainingError("give at least one seed (seeds=N or a list)")
    policy = make_precision(precision)
    plan = _Plan.make(
        prob, steps, batch_size, eval_every, log_every, chunk_steps, replicas, divergence_factor
    )
    if plan.replicas:
        require_x64("noise replicas (the noise floor)")
        if policy.kahan or policy.rounding != "nearest":
            raise TrainingError(
                "noise replicas need round-to-nearest without Kahan; drop 'kahan' or "
                "'rounding=stochastic' from the precision, or set replicas=0"
            )
    all_probes = _probes(probes, plan, track_stalled, record_params)
    for s in specs:
        check_policy(policy, s, prob.init)
        policy.warn_hparams(numeric_hparams(s))

    data = _device_data(prob, policy)
    config = {
        "problem": prob.name,
        "optimizers": [s.text for s in specs],
        "optimizers_canonical": [s.canonical for s in specs],
        "seeds": seed_list,
        "steps": plan.steps,
        "batch_size": plan.batch_size,
        "precision": str(policy),
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
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(s.static_key(), []).append(i)

    n_opt, n_seed = len(specs), len(seed_list)
    n_logs = plan.steps // plan.log_every
    n_evals = plan.steps // plan.eval_every + 1
    series: dict[str, np.ndarray] = {}
    diverged = np.full((n_opt, n_seed), -1, np.int64)
    final_params: list[Any] = [None] * n_opt
    bar = Progress(plan.steps * len(groups), "train", enabled=progress)
    for members in groups.values():
        group_specs = [specs[i] for i in members]
        ckpt = None
        if checkpoint_dir is not None:
            tag = _fingerprint(config, [s.canonical for s in group_specs])
            ckpt = Path(checkpoint_dir) / f"checkpoint-{tag}.npz"
        out, group_div, params = _run_group(
            prob, group_specs, seed_list, policy, plan, all_probes, data, ckpt, bar
        )
        for k, i in enumerate(members):
            diverged[i] = group_div[k]
            final_params[i] = jax.tree.map(lambda a, k=k: a[k], params) if keep_params else None
            for name, arr in out.items():
                if name not in series:
                    series[name] = np.full((n_opt, *arr.shape[1:]), np.nan, arr.dtype)
                series[name][i] = arr[k]
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
        final_params=final_params if keep_params else [],
        wall_time=time.perf_counter() - started,
        config=config,
        stalled=series.get("stalled"),
        replica_distance=series.get("replica_distance"),
        trajectory=series.get("trajectory"),
        probes={
            k: v for k, v in series.items() if not k.startswith("eval:") and k not in builtin
        },
    )


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
    """Validated step, batch, evaluation and chunk sizes, and what the run records."""

    steps: int
    order: BatchOrder
    eval_every: int
    log_every: int
    intervals_per_chunk: int
    n_intervals: int
    replicas: int
    divergence_factor: float

    @classmethod
    def make(cls, prob, steps, batch_size, eval_every, log_every, chunk_steps, replicas,
             divergence_factor=DIVERGENCE_FACTOR) -> "_Plan":  # fmt: skip
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
        n_intervals = steps // eval_every
        if chunk_steps is None:
            # Aim for a progress report every ~2e5 lane-steps of work, at least one interval.
            per_chunk = max(1, min(n_intervals, 200_000 // eval_every))
        else:
            per_chunk = max(1, _positive_int(chunk_steps, "chunk_steps") // eval_every)
        return cls(
            steps=steps,
            order=BatchOrder(n, n if full else batch_size),
            eval_every=eval_every,
            log_every=log_every,
            intervals_per_chunk=min(per_chunk, n_intervals),
            n_intervals=n_intervals,
            replicas=_non_negative_int(replicas, "replicas"),
            divergence_factor=_factor(divergence_factor),
        )

    @property
    def batch_size(self) -> int:
        return self.order.batch_size


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


def _run_group(prob, specs, seeds, policy, plan, probes, data, ckpt, bar):
    """Train one compiled program: lanes = len(specs) x len(seeds).

    Returns ``(series, diverged [C, S], final params [C, S, ...])`` where ``series`` maps
    ``loss`` and each step probe's outputs to ``[C, S, T]``, ``eval:<set>/<metric>`` to
    ``[C, S, E]`` and each eval probe's outputs to ``[C, S, E, ...]``.
    """
    n_cfg, n_seed = len(specs), len(seeds)
    lanes = n_cfg * n_seed
    hvals = lane_hparams(specs, policy, n_seed)
    root = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds, jnp.uint32), n_cfg))
    init_all, eval_all, chunk_all = _programs(prob, specs[0], policy, plan, probes)

    carry = init_all(root, hvals)
    resumed = _load_checkpoint(ckpt, carry)
    if resumed is not None:
        carry, done, parts = resumed
        bar.advance(done * plan.eval_every, "(resumed)")
    else:
        done = 0
        first = eval_all(carry, data)  # evaluation at step 0
        parts = {k: [np.asarray(v).reshape(lanes, 1, *np.shape(v)[1:])] for k, v in first.items()}
    step_series = {"loss"} | {o for p in probes if p.when == "step" for o in p.outputs}
    while done < plan.n_intervals:
        n = min(plan.intervals_per_chunk, plan.n_intervals - done)
        t0 = jnp.asarray(done * plan.eval_every, jnp.int32)
        carry, out = chunk_all(carry, hvals, data, t0, n)
        for k, v in out.items():
            v = np.asarray(v)
            # Per-step series arrive as [lanes, intervals, windows]: flatten time.
            v = v.reshape(lanes, -1) if k in step_series else v
            parts.setdefault(k, []).append(v)
        done += n
        _save_checkpoint(ckpt, carry, done, parts)
        bar.advance(n * plan.eval_every)

    series = {}
    for k, v in parts.items():
        joined = np.concatenate(v, axis=1)
        series[k] = joined.reshape(n_cfg, n_seed, *joined.shape[1:])
    div = np.asarray(carry["diverged"]).reshape(n_cfg, n_seed)
    params = jax.tree.map(
        lambda a: np.asarray(a).reshape(n_cfg, n_seed, *a.shape[1:]), carry["run"].params
    )
    return series, div, params


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

    def replica_step(tx, hv, rep, seed, batch, t):
        return one_step(tx, rep, batch, t, None, Noise(seed, noise_scale))[0]

    replicas_step = jax.vmap(replica_step, in_axes=(None, None, 0, 0, None, None))

    def evaluate_lane(carry, data):
        params_c = policy.to_compute(carry["run"].params)
        finite = _all_finite(params_c)  # a model with NaN weights has no accuracy: NaN
        out = {}
        for set_name, batch in data["evals"].items():
            for metric, value in prob.evaluate(params_c, batch).items():
                value = jnp.asarray(value, jnp.result_type(float))
                out[f"eval:{set_name}/{metric}"] = jnp.where(finite, value, jnp.nan)
        if eval_probes:
            values = StepValues(
                t=None, params=carry["run"].params, new_params=carry["run"].params, grads=None,
                loss=None, batch=None, updates=None, state=None, lr=None, loss_fn=prob.loss,
                eval_batch=data["evals"]["train"], key=carry["probe_key"],
                replica_params=carry["replicas"].params if plan.replicas else None,
            )  # fmt: skip
            for probe in eval_probes:
                out.update(probe.update(values, ())[1])
        return out

    def chunk_lane(carry, hv, data, t0, n_intervals):
        # Re-derive the current epoch's permutation at each chunk start (so nothing but the carry
        # needs checkpointing), then scan: intervals of eval_every steps, each ending in an eval.
        tx = template.build(hv)
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
            if plan.replicas:
                carry["replicas"] = replicas_step(
                    tx, hv, carry["replicas"], carry["noise_seed"], batch, t
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
                    key=jax.random.fold_in(carry["probe_key"], t),
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

        def interval(state, i):
            t = t0 + i * plan.eval_every + jnp.arange(plan.eval_every, dtype=jnp.int32)
            (carry, perm), per_step = jax.lax.scan(one, state, t)
            out = evaluate_lane(carry, data)
            for name, values in per_step.items():
                windows = values.reshape(-1, plan.log_every)
                out[name] = reducers[name](windows)
            return (carry, perm), out

        (carry, _), out = jax.lax.scan(interval, (carry, perm0), jnp.arange(n_intervals))
        return carry, out

    init_all = jax.jit(jax.vmap(init_lane))
    eval_all = jax.jit(jax.vmap(evaluate_lane, in_axes=(0, None)))
    chunk_all = jax.jit(
        jax.vmap(chunk_lane, in_axes=(0, 0, None, None, None)),
        static_argnums=(4,),
        donate_argnums=(0,),
    )
    return init_all, eval_all, chunk_all


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ---------------------------------------------------------------- checkpoints


def _fingerprint(config: dict, group: list[str]) -> str:
    text = json.dumps({"config": config, "group": group}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_checkpoint(path, carry, done, parts) -> None:
    """Leaves of the carry, the finished interval count and the series so far, atomically."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"carry_{i}": np.asarray(_key_data(x)) for i, x in enumerate(jax.tree.leaves(carry))}
    arrays["done"] = np.asarray(done)
    for key, chunks in parts.items():
        arrays[f"series::{key}"] = np.concatenate(chunks, axis=1)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(x):
    return jax.random.key_data(x) if _is_key(x) else x


def _load_checkpoint(path, template):
    """The saved carry (shaped like ``template``, a fresh init) and series, or None."""
    if path is None or not path.exists():
        return None
    with np.load(path) as z:
        leaves, treedef = jax.tree.flatten(template)
        restored = []
        for i, like in enumerate(leaves):
            saved = jnp.asarray(z[f"carry_{i}"])
            restored.append(jax.random.wrap_key_data(saved) if _is_key(like) else saved)
        carry = jax.tree.unflatten(treedef, restored)
        parts = {k[8:]: [z[k]] for k in z.files if k.startswith("series::")}
        return carry, int(z["done"]), parts
