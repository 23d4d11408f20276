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
import optax

from optimorph.engine.progress import Progress
from optimorph.engine.result import TrainResult
from optimorph.optimizers import OptimizerSpec, resolve
from optimorph.precision import precision as make_precision
from optimorph.precision import require_x64
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
    replicas: int = 0,
    record_params: bool = False,
    track_stalled: bool = False,
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
        (``stalled``; NaN when not tracked).

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
    plan = _Plan.make(prob, steps, batch_size, eval_every, log_every, chunk_steps, replicas)
    plan.record_params = bool(record_params)
    plan.track_stalled = bool(track_stalled)
    if plan.replicas:
        require_x64("noise replicas (the noise floor)")
        if policy.kahan or policy.rounding != "nearest":
            raise TrainingError(
                "noise replicas need round-to-nearest without Kahan; drop 'kahan' or "
                "'rounding=stochastic' from the precision, or set replicas=0"
            )
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
        "replicas": plan.replicas,
        "record_params": plan.record_params,  # part of the checkpoint fingerprint: they change
        "track_stalled": plan.track_stalled,  # what the saved series hold
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
            prob, group_specs, seed_list, policy, plan, data, ckpt, bar
        )
        for k, i in enumerate(members):
            diverged[i] = group_div[k]
            final_params[i] = jax.tree.map(lambda a, k=k: a[k], params) if keep_params else None
            for name, arr in out.items():
                if name not in series:
                    series[name] = np.full((n_opt, *arr.shape[1:]), np.nan, arr.dtype)
                series[name][i] = arr[k]
    evals = {k[5:]: v for k, v in series.items() if k.startswith("eval:")}
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
        stalled=series["stalled"] if track_stalled else None,
        replica_distance=series.get("replica_distance"),
        trajectory=series.get("trajectory"),
    )


def _numeric_hparams(spec: OptimizerSpec) -> dict[str, float]:
    # Schedule parameters (tau, steps) are computed in high precision; only the rest is stored.
    return {k: v for k, v in spec.traced_values().items() if "." not in k}


class _Plan:
    """Validated step, batch, evaluation and chunk sizes."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @classmethod
    def make(cls, prob, steps, batch_size, eval_every, log_every, chunk_steps, replicas) -> "_Plan":
        steps = _positive_int(steps, "steps")
        n = prob.n_train
        full = prob.full_batch or batch_size is None or batch_size >= n
        if batch_size is not None:
            batch_size = _positive_int(batch_size, "batch_size")
        batch = n if full else batch_size
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
            batch_size=batch,
            full_batch=full,
            steps_per_epoch=max(n // batch, 1),
            eval_every=eval_every,
            log_every=log_every,
            intervals_per_chunk=min(per_chunk, n_intervals),
            n_intervals=n_intervals,
            replicas=_non_negative_int(replicas, "replicas"),
            record_params=False,
            track_stalled=False,
        )


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
    """Train one compiled program: lanes = len(specs) x len(seeds).

    Returns ``(series, diverged [C, S], final params [C, S, ...])`` where ``series`` maps
    ``loss``/``stalled`` to ``[C, S, T]``, ``eval:<set>/<metric>`` to ``[C, S, E]``, and (when
    asked) ``replica_distance`` to ``[C, S, E, k]`` and ``trajectory`` to ``[C, S, E, P]``.
    """
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
        carry, done, parts = resumed
        bar.advance(done * plan.eval_every, "(resumed)")
    else:
        done = 0
        first = eval_all(carry, arrays)  # evaluation at step 0
        parts = {k: [np.asarray(v).reshape(lanes, 1, *np.shape(v)[1:])] for k, v in first.items()}
    while done < plan.n_intervals:
        n = min(plan.intervals_per_chunk, plan.n_intervals - done)
        t0 = jnp.asarray(done * plan.eval_every, jnp.int32)
        carry, out = chunk_all(carry, hvals, arrays, t0, n)
        for k, v in out.items():
            v = np.asarray(v)
            # Per-step series arrive as [lanes, intervals, window]: flatten time.
            v = v.reshape(lanes, -1) if k in _STEP_SERIES else v
            parts.setdefault(k, []).append(v)
        done += n
        _save_checkpoint(ckpt, carry, done, parts)
        bar.advance(n * plan.eval_every)

    series = {
        k: np.concatenate(v, axis=1).reshape(n_cfg, n_seed, *np.concatenate(v, 1).shape[1:])
        for k, v in parts.items()
    }
    div = np.asarray(carry["diverged"])[:, 0].reshape(n_cfg, n_seed)  # replica 0: the run
    params = jax.tree.map(
        lambda a: np.asarray(a[:, 0]).reshape(n_cfg, n_seed, *a.shape[2:]), carry["params"]
    )
    return series, div, params


_STEP_SERIES = ("loss", "stalled")

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
    """The vmapped init, evaluation and chunk programs of one group.

    A lane's carry has a leading replica axis of size 1 + replicas: replica 0 is the run itself,
    the others are its noisy copies (same batches, same hyperparameters).
    """
    n = prob.n_train
    n_rep = 1 + plan.replicas
    u = policy.unit_roundoff
    noise = jnp.asarray([0.0] + [u] * plan.replicas)  # per replica: relative noise amplitude

    def init_lane(key, hv):
        init_key, data_key, sr_key, noise_key = jax.random.split(key, 4)
        params = policy.cast_params(prob.init(init_key))
        # The initial state is rounded like every later one (SR needs a key; init values are
        # usually exact zeros, so the draw rarely matters).
        init_state = template.build(hv).init(policy.to_compute(params))
        state = policy.round_state(init_state, sr_key if policy.rounding == "stochastic" else None)
        comp = policy.init_compensation(params) if policy.kahan else None
        replica = {
            "params": params,
            "state": state,
            "comp": comp,
            "sr_key": sr_key,
            "diverged": jnp.asarray(-1, jnp.int32),
        }
        carry = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_rep, *x.shape)), replica)
        # Per replica a 32-bit seed for the noise hash (see perturbed).
        carry["noise_key"] = jax.random.bits(noise_key, (n_rep,), jnp.uint32)
        carry["data_key"] = data_key
        return carry

    def perturbed(tree, seed, scale):
        # x (1 + scale * xi) formed in float64, before the rounding that follows. xi comes from a
        # counter-based integer hash: threefry per leaf and step doubled the compile time.
        leaves, treedef = jax.tree.flatten(tree)
        out = []
        for i, leaf in enumerate(leaves):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                xi = _hash_uniform(leaf.shape, seed + jnp.uint32(0x9E3779B9) * jnp.uint32(i + 1))
                leaf = leaf.astype(jnp.float64) * (1.0 + scale * xi)
            out.append(leaf)
        return jax.tree.unflatten(treedef, out)

    def step_replica(rep, noise_key, scale, hv, batch, t):
        tx = template.build(hv)
        params_c = policy.to_compute(rep["params"])
        loss, grads = jax.value_and_grad(prob.loss)(params_c, batch)
        sr = jax.random.fold_in(rep["sr_key"], t) if policy.rounding == "stochastic" else None
        keys = jax.random.split(sr, 3) if sr is not None else (None, None, None)
        grads = policy.round_grads(grads, keys[0])
        updates, state = tx.update(grads, policy.to_compute(rep["state"]), params_c)
        if plan.replicas:
            seed = _mix(noise_key ^ _mix(t.astype(jnp.uint32)))
            k_state, k_params = seed, _mix(seed + jnp.uint32(1))
            state = perturbed(state, k_state, scale)
            exact = jax.tree.map(
                lambda p, d: p.astype(jnp.float64) + d.astype(jnp.float64), rep["params"], updates
            )
            params, comp = policy.cast_params(perturbed(exact, k_params, scale)), rep["comp"]
        else:
            params, comp = policy.apply_updates(rep["params"], updates, rep["comp"], keys[2])
        state = policy.round_state(state, keys[1])
        # Stagnation costs two reductions per step (about 2x at tiny batch sizes): on request.
        if plan.track_stalled:
            stalled = policy.stalled(rep["params"], updates, params)
        else:
            stalled = jnp.zeros((), jnp.float32)
        bad = ~jnp.isfinite(loss) | ~_all_finite(params)
        first_bad = (rep["diverged"] < 0) & bad
        diverged = jnp.where(first_bad, (t + 1).astype(jnp.int32), rep["diverged"])
        new = dict(rep, params=params, state=state, comp=comp, diverged=diverged)
        return new, loss, stalled

    replicas_step = jax.vmap(step_replica, in_axes=(0, 0, 0, None, None, None))

    def evaluate_lane(carry, arrays):
        params = jax.tree.map(lambda a: a[0], carry["params"])
        params_c = policy.to_compute(params)
        out = {}
        for set_name, batch in arrays["evals"].items():
            for metric, value in prob.evaluate(params_c, batch).items():
                out[f"eval:{set_name}/{metric}"] = jnp.asarray(value, jnp.result_type(float))
        if plan.replicas or plan.record_params:
            flat = jnp.stack(
                [
                    jnp.concatenate(
                        [
                            jnp.ravel(x[r]).astype(jnp.result_type(float))
                            for x in jax.tree.leaves(carry["params"])
                        ]
                    )
                    for r in range(n_rep)
                ]
            )
            if plan.replicas:
                out["replica_distance"] = jnp.linalg.norm(flat[1:] - flat[:1], axis=1)
            if plan.record_params:
                out["trajectory"] = flat[0]
        return out

    def chunk_lane(carry, hv, arrays, t0, n_intervals):
        # Re-derive the current epoch's permutation at each chunk start (so nothing but the carry
        # needs checkpointing), then scan: intervals of eval_every steps, each ending in an eval.
        perm0 = _permutation(carry["data_key"], t0 // plan.steps_per_epoch, n)

        def one(state, t):
            carry, perm = state
            epoch, pos = t // plan.steps_per_epoch, t % plan.steps_per_epoch
            if plan.full_batch:
                batch = arrays["train"]
            else:
                # t is shared by all lanes, so this stays a real branch under vmap: one sort per
                # epoch, not one per step.
                perm = jax.lax.cond(
                    pos == 0, lambda: _permutation(carry["data_key"], epoch, n), lambda: perm
                )
                idx = jax.lax.dynamic_slice(perm, (pos * plan.batch_size,), (plan.batch_size,))
                batch = tuple(jnp.take(a, idx, axis=0) for a in arrays["train"])
            reps = {k: carry[k] for k in ("params", "state", "comp", "sr_key", "diverged")}
            reps, loss, stalled = replicas_step(reps, carry["noise_key"], noise, hv, batch, t)
            return (dict(carry, **reps), perm), (loss[0], stalled[0])

        def interval(state, i):
            t = t0 + i * plan.eval_every + jnp.arange(plan.eval_every, dtype=jnp.int32)
            (carry, perm), (losses, stalled) = jax.lax.scan(one, state, t)
            out = evaluate_lane(carry, arrays)
            out["loss"] = losses.reshape(-1, plan.log_every).mean(axis=1)
            out["stalled"] = stalled.reshape(-1, plan.log_every).mean(axis=1)
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


def _mix(x: jax.Array) -> jax.Array:
    """lowbias32 integer hash (Wellons): a well-mixed uint32 from a uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _hash_uniform(shape, seed: jax.Array) -> jax.Array:
    """Uniform(-1, 1) float64 values, one per element, from a counter-based hash of ``seed``."""
    n = int(np.prod(shape)) if shape else 1
    bits = _mix(jnp.arange(n, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1) + _mix(seed))
    return (bits.astype(jnp.float64) * 2.0**-31 - 1.0).reshape(shape)


def _permutation(key, epoch, n):
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


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
