"""Engine throughput against the plain jitted JAX loop, NumPy and PyTorch eager, in one run.

The noisy-two-moons MLP (2-64-64-2, ReLU, cross-entropy) trained with SGD on a power-law schedule
at batch sizes 4, 32 and 500, one seed and 10 seeds, fp32. One model updated once is one
model-step. The peer that matters is the loop a JAX user writes: one jitted optax step per
Python iteration with the seeds vmapped, the same data order (a permutation per epoch from the
seed's data key, consecutive slices), compilation excluded by a warm-up. Engine and plain loop
are sampled alternately, ``--samples`` times each; the table gives the medians and the ratio's
median with its interquartile range over the paired samples, in wall time and in CPU time (on a
shared machine wall time favours the plain loop, whose Python thread dispatches while XLA's
computes: two runnable threads get two shares of a busy CPU). NumPy and PyTorch are measured once
per batch size. With ``--devices N`` (default 2) the engine is also timed with its lanes split
over N CPU devices (``train(devices=N)``, in this process: the flag that makes the devices is
set before JAX starts; the other loops run on the first device as before), where the seeds
divide evenly. Last, the achieved FLOP rate at batch 500 (the faster engine layout) against
this machine's float32 matmul rate measured with every thread on one core, and on all of them,
and against the rate of the least a trainer of this model does (its gradient and a plain SGD
update in a compiled loop, no data order or checks): the model's layers of width 2 keep XLA's
products far below the matmul rate, whatever runs them.

    .venv/bin/python benchmarks/engine.py [--samples 7] [--seconds 1] [--quick] [--x64]
                                          [--devices 2]

``--x64`` measures the engine as the ``optimorph`` command runs it, with float64 enabled: an fp32
run then keeps subnormals in its update x + u (``precision.rounding.add_float32``, in float32;
it used to go through float64 and was most of a batch-4 step), and draws each epoch's
permutation with a faster sort.

Targets (issue 22): >= 5x the plain loop at batch 4, >= 2.5x at batch 32, >= 1.5x at batch 500,
and batch 500 within 1.5x of the two-core matmul rate. (Issue 2: batch 4 with 10 seeds >= 10x
NumPy and >= 40x PyTorch eager.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import time
from collections.abc import Callable

import numpy as np

WIDTHS = (2, 64, 64, 2)
ETA0, TAU, ALPHA = 0.15, 5e4, 1.0
PROBLEM = "two-moons(n=500, noise=0.1, flip=0.1)"
SPEC = f"sgd(lr=power_law({ETA0}, tau={TAU}, alpha={ALPHA}))"


def _data(n=500, seed=0):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.1, random_state=seed)
    rng = np.random.default_rng(seed)
    flip = rng.random(n) < 0.1
    return x.astype(np.float32), np.where(flip, 1 - y, y).astype(np.int64)


def numpy_steps_per_s(x, y, batch, steps):
    """The textbook loop: hand-written forward/backward, one minibatch per Python iteration."""
    from optimorph.experiments.numpy_reference import steps_per_second

    return steps_per_second(x, y, batch, steps)


def torch_steps_per_s(x, y, batch, steps, seed=0):
    """PyTorch eager: nn.Sequential, torch.optim.SGD with LambdaLR, the usual loop."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=ETA0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 / (1 + (e + 1) / TAU) ** ALPHA)
    xt, yt = torch.tensor(x), torch.tensor(y)
    n = len(x)
    gen = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=gen), 0
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch]
        pos += batch
        opt.zero_grad()
        loss_fn(model(xt[idx]), yt[idx]).backward()
        opt.step()
        sched.step()
    return steps / (time.perf_counter() - start)


def plain_jax_loop(problem, batch: int, seeds: int) -> Callable[[int], None]:
    """``run(steps)``: the loop a JAX user writes. One jitted, seed-vmapped optax step per Python
    iteration; at each epoch start one jitted call draws every seed's permutation
    (``jax.random.permutation(fold_in(data_key, epoch), n)``, the engine's rule); a step takes
    its slice. The same model, loss, initial parameters and keys as ``optimorph.train``."""
    import jax
    import jax.numpy as jnp
    import optax

    from optimorph.engine.step import run_keys

    tx = optax.sgd(lambda count: ETA0 / (1 + (count + 1) / TAU) ** ALPHA)
    x, y = (jnp.asarray(a) for a in problem.train)
    n = x.shape[0]
    batch = min(batch, n)
    per_epoch = n // batch
    keys = jax.vmap(lambda s: run_keys(jax.random.key(s)))(jnp.arange(seeds, dtype=jnp.uint32))

    @jax.jit
    def init(init_keys):
        params = jax.vmap(problem.init)(init_keys)
        return params, jax.vmap(tx.init)(params)

    @jax.jit
    def permutations(data_keys, epoch):
        return jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(
            data_keys
        )

    def one(params, state, perm, pos):
        if batch == n:  # full batch: the training set as it is, no permutation
            data = (x, y)
        else:
            idx = jax.lax.dynamic_slice(perm, (pos * batch,), (batch,))
            data = (x[idx], y[idx])
        loss, grads = jax.value_and_grad(problem.loss)(params, data)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)), donate_argnums=(0, 1))

    def run(steps: int) -> None:
        params, state = init(keys.init)
        perm = jnp.zeros((seeds, 0), jnp.int32)
        for t in range(steps):
            epoch, pos = divmod(t, per_epoch)
            if pos == 0 and batch < n:
                perm = permutations(keys.data, epoch)
            params, state, _ = step(params, state, perm, pos)
        jax.block_until_ready(params)

    return run


def optimorph_loop(problem, batch: int, seeds: int, devices=None) -> Callable[[int], None]:
    """``run(steps)``: ``optimorph.train`` with one evaluation at the end (and at step 0), its
    lanes on ``devices`` devices (None: one)."""
    import optimorph

    def run(steps: int) -> None:
        optimorph.train(problem, SPEC, steps=steps, seeds=seeds, batch_size=batch,
                        eval_every=steps, progress=False, keep_params=False,
                        devices=devices)  # fmt: skip

    return run


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def paired_samples(runs: dict[str, Callable[[int], None]], steps: int, samples: int) -> dict:
    """``{name: (wall seconds, cpu seconds) arrays}`` of ``samples`` runs of ``steps`` steps each,
    the runs alternating (their order reversed every other round, so drift hits both alike)."""
    for run in runs.values():
        run(steps)  # compile, and warm the caches
    out = {name: ([], []) for name in runs}
    names = list(runs)
    for i in range(samples):
        for name in names if i % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            runs[name](steps)
            out[name][0].append(time.perf_counter() - wall)
            out[name][1].append(_cpu_seconds() - cpu)
    return {name: (np.array(w), np.array(c)) for name, (w, c) in out.items()}


def _steps_for(run: Callable[[int], None], seconds: float, minimum: int = 100) -> int:
    """A step count (a multiple of 100) that takes about ``seconds`` (from a short timed run)."""
    run(minimum)  # compile
    start = time.perf_counter()
    run(minimum)
    per_step = (time.perf_counter() - start) / minimum
    return max(minimum, int(seconds / per_step) // 100 * 100)


def _ratio(a: np.ndarray, b: np.ndarray) -> str:
    r = a / b
    return f"{np.median(r):5.2f} [{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}]"


def matmul_flops(cpus: set[int] | None = None, dtype: str = "float32") -> float:
    """The matmul rate (FLOP/s) through XLA in ``dtype``, best of a few sizes, with every thread
    of this process confined to ``cpus`` meanwhile (None: as it is)."""
    import jax
    import jax.numpy as jnp

    with _confined(cpus):
        best = 0.0
        for n in (256, 512, 1024):
            a = jnp.ones((n, n), dtype)
            f = jax.jit(lambda a: a @ a)
            f(a).block_until_ready()
            reps = max(3, int(2e9 / (2 * n**3)))
            start = time.perf_counter()
            for _ in range(reps):
                out = f(a)
            out.block_until_ready()
            best = max(best, reps * 2 * n**3 / (time.perf_counter() - start))
        return best


@contextlib.contextmanager
def _confined(cpus: set[int] | None):
    """Every thread of this process, those started inside included, on ``cpus`` (None: as
    they are)."""
    tids = [int(t) for t in os.listdir("/proc/self/task")] if cpus is not None else []
    before = {t: os.sched_getaffinity(t) for t in tids}
    for t in tids:
        os.sched_setaffinity(t, cpus)
    try:
        yield
    finally:
        for t, mask in before.items():
            os.sched_setaffinity(t, mask)


def bare_sgd_seconds(problem, batch: int, seeds: int, devices: int = 1, steps: int = 200,
                     cpus: set[int] | None = None) -> float:  # fmt: skip
    """Seconds per step of the least a compiled trainer of this model does: its gradient and a
    plain SGD update in a ``fori_loop``, the seeds vmapped, the same first ``batch`` examples at
    every step (no data order, evaluation or checks), the lanes split over ``devices`` devices
    running at the same time, every thread on ``cpus`` (None: as it is); best of 3. What XLA's
    kernels make of this model's shapes: no trainer of it can be much faster."""
    import threading

    import jax
    import jax.numpy as jnp

    from optimorph.engine.step import run_keys

    x, y = (jnp.asarray(a)[:batch] for a in problem.train)
    grad = jax.vmap(jax.grad(problem.loss), in_axes=(0, None))

    @jax.jit
    def loop(params, data):
        def body(_, p):
            return jax.tree.map(lambda a, g: a - 1e-3 * g, p, grad(p, data))

        return jax.lax.fori_loop(0, steps, body, params)

    lanes = seeds // devices
    keys = jax.vmap(lambda s: run_keys(jax.random.key(s)))(jnp.arange(lanes, dtype=jnp.uint32))
    best = [float("inf")] * devices

    def on(i: int) -> None:
        device = jax.local_devices()[i]
        params = jax.device_put(jax.vmap(problem.init)(keys.init), device)
        data = jax.device_put((x, y), device)
        jax.block_until_ready(loop(params, data))  # compile
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(loop(params, data))
            best[i] = min(best[i], time.perf_counter() - start)

    with _confined(cpus):
        threads = [threading.Thread(target=on, args=(i,)) for i in range(devices)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return max(best) / steps


def model_flops_per_step(batch):
    """Forward + backward multiply-adds of the MLP: ~3x the forward matmul FLOPs."""
    forward = sum(2 * batch * a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    return 3 * forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=7, help="alternating samples of each loop")
    ap.add_argument("--seconds", type=float, default=1.0, help="about how long one sample runs")
    ap.add_argument("--peer-steps", type=int, default=3000, help="steps per NumPy/PyTorch run")
    ap.add_argument("--x64", action="store_true", help="turn jax_enable_x64 on, as the CLI does")
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    ap.add_argument("--devices", type=int, default=2,
                    help="also time the engine with its lanes split over this many CPU devices "
                    "(train(devices=N); 1: not)")  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.samples, args.seconds, args.peer_steps = 3, 0.2, 300
    if args.devices > 1:  # read when JAX starts its backend: before anything computes
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax

    jax.config.update("jax_enable_x64", args.x64)
    import optimorph

    problem = optimorph.problem(PROBLEM)
    x, y = _data()
    print(f"jax {jax.__version__}, x64 {'on' if args.x64 else 'off'}, {os.cpu_count()} CPUs; "
          f"medians of {args.samples} alternating samples, [interquartile range]")  # fmt: skip
    split = f"on {args.devices} dev" if args.devices > 1 else ""
    print(
        f"{'batch':>5} {'seeds':>5} {'optimorph':>10} {'plain jax':>10} {'ratio (wall)':>18} "
        f"{'ratio (cpu)':>18} {'x numpy':>8} {'x torch':>8} {split:>10} {'ratio':>18}"
        "   (model-steps/s)"
    )
    rates = {}
    for batch in (4, 32, 500):
        np_rate = numpy_steps_per_s(x, y, batch, args.peer_steps)
        torch_rate = torch_steps_per_s(x, y, batch, args.peer_steps)
        for seeds in (1, 10):
            runs = {
                "optimorph": optimorph_loop(problem, batch, seeds),
                "plain": plain_jax_loop(problem, batch, seeds),
            }
            if args.devices > 1 and seeds % args.devices == 0:
                runs["split"] = optimorph_loop(problem, batch, seeds, devices=args.devices)
            steps = _steps_for(runs["optimorph"], args.seconds)
            got = paired_samples(runs, steps, args.samples)
            (ew, ec), (pw, pc) = got["optimorph"], got["plain"]
            ours, plain = seeds * steps / np.median(ew), seeds * steps / np.median(pw)
            rates[batch, seeds] = ours
            row = (
                f"{batch:>5} {seeds:>5} {ours:>10.0f} {plain:>10.0f} {_ratio(pw, ew):>18} "
                f"{_ratio(pc, ec):>18} {ours / np_rate:>8.1f} {ours / torch_rate:>8.1f}"
            )
            if "split" in got:
                sw = got["split"][0]
                rates[batch, seeds, "split"] = seeds * steps / np.median(sw)
                row += f" {rates[batch, seeds, 'split']:>10.0f} {_ratio(pw, sw):>18}"
            print(row, flush=True)
    one_core = matmul_flops({min(os.sched_getaffinity(0))})
    all_cores = matmul_flops(os.sched_getaffinity(0))
    achieved = max(rates[k] for k in rates if k[0] == 500) * model_flops_per_step(500)
    print(
        f"batch 500: {achieved / 1e9:.1f} GFLOP/s achieved; matmul rate {one_core / 1e9:.1f} "
        f"GFLOP/s on one core ({one_core / achieved:.1f}x above), {all_cores / 1e9:.1f} on "
        f"{len(os.sched_getaffinity(0))} ({all_cores / achieved:.1f}x above; target <= 1.5x)"
    )
    devices = args.devices if args.devices > 1 and 10 % args.devices == 0 else 1
    bare = 10 * model_flops_per_step(500) / bare_sgd_seconds(problem, 500, 10, devices)
    print(
        f"batch 500, the model's gradient and a plain SGD update alone (10 seeds, "
        f"{devices} device{'s' if devices > 1 else ''}): {bare / 1e9:.1f} GFLOP/s, "
        f"{all_cores / bare:.1f}x below the matmul rate; the engine runs at "
        f"{achieved / bare:.2f}x this rate"
    )


if __name__ == "__main__":
    main()
