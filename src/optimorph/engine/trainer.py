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

from optimorph.engine.progress import Progress
from optimorph.engine.result import TrainResult
from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.precision import precision as make_precision
from optimorph.problems import Problem
from optimorph.problems import problem as make_problem
from optimorph.results.atomic import atomic_path

__all__ = ["train", "TrainingError"]

# Lanes x examples of the "train" evaluation subset: a fixed prefix of the training set.
TRAIN_EVAL_MAX = 2048


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

    Returns:
      A :class:`TrainResult` with arrays indexed ``[optimizer, seed, time]``.

    >>> r = train("quadratic(dim=4, kappa=10)", ["sgd(lr=0.1)", "sgd(lr=0.05)"], steps=50,
    ...           progress=False)
    >>> r.train_loss.shape, bool(r.train_loss[0, 0, -1] < r.train_loss[0, 0, 0])
    ((2, 1, 50), True)
    """
    started = time.perf_counter()
    prob = problem if isinstance(problem, Problem) else make_problem(problem)
    optimizers = (
        [optimizers]
        if isinstance(optimizers, (str, OptimizerSpec)) or not isinstance(optimizers, Sequence)
        else list(optimizers)
    )
    specs = [resolve(o) for o in optimizers]
    if not specs:
        raise TrainingError("give at least one optimizer")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise TrainingError("give at least one seed (seeds=N or a list)")
    policy = make_precision(precision)
    plan = _Plan.make(prob, steps, batch_size, eval_every, log_every, chunk_steps)
    for s in specs:
        policy.warn_hparams(_numeric_hparams(s))

    data = _Data.make(prob, policy, plan)
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
        "problem_info": dict(prob.info),
    }
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(s.static_key(), []).append(i)

    n_logs = plan.steps // plan.log_every
    n_evals = plan.steps // plan.eval_every + 1
    train_loss = np.full((len(specs), len(seed_list), n_logs), np.nan)
    evals: dict[str, np.ndarray] = {}
    diverged = np.full((len(specs), len(seed_list)), -1, np.int64)
    final_params: list[Any] = [None] * len(specs)
    bar = Progress(plan.steps * len(groups), "train", enabled=progress)
    for members in groups.values():
        group_specs = [specs[i] for i in members]
        ckpt = None
        if checkpoint_dir is not None:
            tag = _fingerprint(config, [s.canonical for s in group_specs])
            ckpt = Path(checkpoint_dir) / f"checkpoint-{tag}.npz"
        out = _run_group(prob, group_specs, seed_list, policy, plan, data, ckpt, bar)
        losses, group_evals, group_div, params = out
        for k, i in enumerate(members):
            train_loss[i] = losses[k]
            diverged[i] = group_div[k]
            final_params[i] = jax.tree.map(lambda a, k=k: a[k], params) if keep_params else None
            for name, arr in group_evals.items():
                evals.setdefault(name, np.full((len(specs), len(seed_list), n_evals), np.nan))
                evals[name][i] = arr[k]
    return TrainResult(
        optimizers=[s.text for s in specs],
        seeds=seed_list,
        steps=np.arange(1, n_logs + 1) * plan.log_every,
        train_loss=train_loss,
        eval_steps=np.arange(n_evals) * plan.eval_every,
        evals=evals,
        diverged_at=diverged,
        final_params=final_params if keep_params else [],
        wall_time=time.perf_counter() - started,
        config=config,
    )


def _numeric_hparams(spec: OptimizerSpec) -> dict[str, float]:
    # Schedule parameters (tau, steps) are computed in high precision; only the rest is stored.
    return {k: v for k, v in spec.traced_values().items() if "." not in k}


class _Plan:
    """Validated step, batch, evaluation and chunk sizes."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @classmethod
    def make(cls, prob, steps, batch_size, eval_every, log_every, chunk_steps) -> "_Plan":
        steps = _positive_int(steps, "steps")
        n = prob.n_train
        full = prob.full_batch or batch_size is None or batch_size >= n
        if batch_size is not None:
            batch_size = _positive_int(batch_size, "batch_size")
        batch = n if full else batch_size
        eval_every = steps if steps < 20 and eval_every is None else eval_every
        eval_every = _positive_int(eval_every or max(steps // 20, 1), "eval_every")
        log_every = _positive_int(log_every, "log_every")
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
            batch_size=batch,
            full_batch=full,
            steps_per_epoch=max(n // batch, 1),
            eval_every=eval_every,
            log_every=log_every,
            intervals_per_chunk=min(per_chunk, n_intervals),
            n_intervals=n_intervals,
        )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise TrainingError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class _Data:
    """Training and evaluation arrays on the device, floats in the compute dtype."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @classmethod
    def make(cls, prob: Problem, policy, plan: _Plan) -> "_Data":
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
        return cls(train=train, evals=eval_sets, n=prob.n_train)


def _run_group(prob, specs, seeds, policy, plan, data, ckpt, bar):
    """Train one compiled program: lanes = len(specs) x len(seeds)."""
    n_cfg, n_seed = len(specs), len(seeds)
    lanes = n_cfg * n_seed
    # Traced hyperparameters per lane: rounded to the policy's hyperparameter format, except
    # schedule parameters, which stay in high precision like a host-side schedule would.
    hvals = {}
    for name in specs[0].traced_values():
        col = np.repeat([s.traced_values()[name] for s in specs], n_seed)
        arr = jnp.asarray(col, jnp.result_type(float))
        hvals[name] = arr if "." in name else policy.round_hparam(arr)
    root = jax.vmap(jax.random.key)(jnp.tile(jnp.asarray(seeds, jnp.uint32), n_cfg))
    init_all, eval_all, chunk_all = _programs(prob, specs[0], policy, plan)
    arrays = {"train": data.train, "evals": data.evals}

    carry = init_all(root, hvals)
    resumed = _load_checkpoint(ckpt, carry)
    if resumed is not None:
        carry, done, logs, evs = resumed
        bar.advance(done * plan.eval_every, "(resumed)")
    else:
        done, logs = 0, []
        evs = [jax.tree.map(np.asarray, eval_all(carry["params"], arrays))]
    while done < plan.n_intervals:
        n = min(plan.intervals_per_chunk, plan.n_intervals - done)
        t0 = jnp.asarray(done * plan.eval_every, jnp.int32)
        carry, logged, ev = chunk_all(carry, hvals, arrays, t0, n)
        logs.append(np.asarray(logged).reshape(lanes, -1))
        evs.append({k: np.asarray(v) for k, v in ev.items()})
        done += n
        _save_checkpoint(ckpt, carry, done, logs, evs)
        bar.advance(n * plan.eval_every)

    losses = np.concatenate(logs, axis=1).reshape(n_cfg, n_seed, -1)
    ev_out = {}
    for key in evs[0]:
        cols = [np.asarray(evs[0][key]).reshape(lanes, 1)]
        cols += [np.asarray(e[key]).reshape(lanes, -1) for e in evs[1:]]
        ev_out[key] = np.concatenate(cols, axis=1).reshape(n_cfg, n_seed, -1)
    div = np.asarray(carry["diverged"]).reshape(n_cfg, n_seed)
    params = jax.tree.map(
        lambda a: np.asarray(a).reshape(n_cfg, n_seed, *a.shape[1:]), carry["params"]
    )
    return losses, ev_out, div, params


# Compiled programs are kept across calls (a benchmark or a sweep calls train repeatedly); the key
# holds everything the traced functions close over. Data arrays are arguments, never constants.
_PROGRAMS: dict = {}
_PROGRAMS_MAX = 32


def _programs(prob, template, policy, plan):
    key = (id(prob), template.static_key(), str(policy), tuple(sorted(plan.__dict__.items())))
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= _PROGRAMS_MAX:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = (prob, _build_programs(prob, template, policy, plan))
    return _PROGRAMS[key][1]


def _build_programs(prob, template, policy, plan):
    n = prob.n_train

    def init_lane(key, hv):
        init_key, data_key, sr_key = jax.random.split(key, 3)
        params = policy.cast_params(prob.init(init_key))
        # The initial state is rounded like every later one (SR needs a key; init values are
        # usually exact zeros, so the draw rarely matters).
        init_state = template.build(hv).init(policy.to_compute(params))
        state = policy.round_state(init_state, sr_key if policy.rounding == "stochastic" else None)
        comp = policy.init_compensation(params) if policy.kahan else None
        return {
            "params": params,
            "state": state,
            "comp": comp,
            "data_key": data_key,
            "sr_key": sr_key,
            "diverged": jnp.asarray(-1, jnp.int32),
        }

    def step_lane(carry, hv, arrays, t, perm):
        tx = template.build(hv)
        epoch, pos = t // plan.steps_per_epoch, t % plan.steps_per_epoch
        if plan.full_batch:
            batch = arrays["train"]
        else:
            # t is shared by all lanes, so this stays a real branch under vmap: one sort per epoch.
            perm = jax.lax.cond(
                pos == 0, lambda: _permutation(carry["data_key"], epoch, n), lambda: perm
            )
            idx = jax.lax.dynamic_slice(perm, (pos * plan.batch_size,), (plan.batch_size,))
            batch = tuple(jnp.take(a, idx, axis=0) for a in arrays["train"])
        params_c = policy.to_compute(carry["params"])
        loss, grads = jax.value_and_grad(prob.loss)(params_c, batch)
        sr = jax.random.fold_in(carry["sr_key"], t) if policy.rounding == "stochastic" else None
        keys = jax.random.split(sr, 3) if sr is not None else (None, None, None)
        grads = policy.round_grads(grads, keys[0])
        updates, state = tx.update(grads, policy.to_compute(carry["state"]), params_c)
        state = policy.round_state(state, keys[1])
        params, comp = policy.apply_updates(carry["params"], updates, carry["comp"], keys[2])
        bad = ~jnp.isfinite(loss) | ~_all_finite(params)
        first_bad = (carry["diverged"] < 0) & bad
        diverged = jnp.where(first_bad, (t + 1).astype(jnp.int32), carry["diverged"])
        new = dict(carry, params=params, state=state, comp=comp, diverged=diverged)
        return new, perm, loss

    def evaluate_lane(params, arrays):
        params_c = policy.to_compute(params)
        out = {}
        for set_name, batch in arrays["evals"].items():
            for metric, value in prob.evaluate(params_c, batch).items():
                out[f"{set_name}/{metric}"] = jnp.asarray(value, jnp.result_type(float))
        return out

    def chunk_lane(carry, hv, arrays, t0, n_intervals):
        # Re-derive the current epoch's permutation at each chunk start (so nothing but the carry
        # needs checkpointing), then scan: intervals of eval_every steps, each ending in an eval.
        perm0 = _permutation(carry["data_key"], t0 // plan.steps_per_epoch, n)

        def interval(state, i):
            def one(state, j):
                t = (t0 + i * plan.eval_every + j).astype(jnp.int32)
                carry, perm, loss = step_lane(state[0], hv, arrays, t, state[1])
                return (carry, perm), loss

            (carry, perm), losses = jax.lax.scan(one, state, jnp.arange(plan.eval_every))
            logged = losses.reshape(-1, plan.log_every).mean(axis=1)
            return (carry, perm), (logged, evaluate_lane(carry["params"], arrays))

        (carry, _), (logged, ev) = jax.lax.scan(interval, (carry, perm0), jnp.arange(n_intervals))
        return carry, logged, ev

    init_all = jax.jit(jax.vmap(init_lane))
    eval_all = jax.jit(jax.vmap(evaluate_lane, in_axes=(0, None)))
    chunk_all = jax.jit(
        jax.vmap(chunk_lane, in_axes=(0, 0, None, None, None)),
        static_argnums=(4,),
        donate_argnums=(0,),
    )
    return init_all, eval_all, chunk_all


def _permutation(key, epoch, n):
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ---------------------------------------------------------------- checkpoints


def _fingerprint(config: dict, group: list[str]) -> str:
    text = json.dumps({"config": config, "group": group}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_checkpoint(path, carry, done, logs, evs) -> None:
    """Leaves of the carry, the finished step count and the metrics so far, written atomically."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"carry_{i}": np.asarray(_key_data(x)) for i, x in enumerate(jax.tree.leaves(carry))}
    arrays["done"] = np.asarray(done)
    arrays["logs"] = np.concatenate(logs, axis=1)
    for key in evs[0]:
        lanes = np.asarray(evs[0][key]).shape[0]
        arrays[f"eval::{key}"] = np.concatenate(
            [np.asarray(e[key]).reshape(lanes, -1) for e in evs], axis=1
        )
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(x):
    return jax.random.key_data(x) if _is_key(x) else x


def _load_checkpoint(path, template):
    """The saved carry (shaped like ``template``, a fresh init) and metrics, or None."""
    if path is None or not path.exists():
        return None
    with np.load(path) as z:
        leaves, treedef = jax.tree.flatten(template)
        restored = []
        for i, like in enumerate(leaves):
            saved = jnp.asarray(z[f"carry_{i}"])
            restored.append(jax.random.wrap_key_data(saved) if _is_key(like) else saved)
        carry = jax.tree.unflatten(treedef, restored)
        done = int(z["done"])
        logs = [z["logs"]]
        first = {k[6:]: z[k][:, :1] for k in z.files if k.startswith("eval::")}
        rest = {k[6:]: z[k][:, 1:] for k in z.files if k.startswith("eval::")}
    return carry, done, logs, [first, rest]
