"""Cost of the trajectory probes against the plain step, measured in the same run.

The two-moons MLP (2-64-64-2), SGD; model-steps per second (best of ``--repeats`` interleaved
runs: this machine's timings wander by 30%) with no probe, with each probe alone, with all
per-step probes (gap, smooth, corr) and with everything but sharpness (noise's full-batch
gradient every 10 steps), at batch 4, 32 and full batch. The row ``one extra gradient`` is a
probe that only evaluates value_and_grad(f)(x_{t+1}, z_t), which gap and smooth need by their
definition: the floor of their cost.

Target (issue 9): all per-step probes at most 1.8x the plain step's time at batch 32.

    .venv/bin/python benchmarks/probes.py [--steps 8000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time


def rate(problem, spec, batch, steps, probes) -> float:
    import optimorph

    kw = dict(steps=steps, batch_size=batch, eval_every=steps, progress=False, keep_params=False,
              probes=probes)  # fmt: skip
    optimorph.train(problem, spec, **kw)  # compile
    start = time.perf_counter()
    optimorph.train(problem, spec, **kw)
    return steps / (time.perf_counter() - start)


def one_extra_gradient():
    """A probe doing only the extra gradient gap and smooth need (the floor of their cost)."""
    import jax
    import jax.numpy as jnp

    from optimorph.probes import Probe

    def update(v, s):
        loss, grad = jax.value_and_grad(v.loss_fn)(v.new_params, v.batch)
        return s, {"extra": loss + sum(jnp.sum(g) for g in jax.tree.leaves(grad))}

    return [Probe("extra", lambda p: (), update)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import optimorph
    from optimorph.probes.trajectory import make_probes

    problem = optimorph.problem("two-moons(n=500, noise=0.1, flip=0.1)")
    spec = "sgd(lr=power_law(0.15, tau=5e4, alpha=1))"
    sets = {
        "plain": [],
        "one extra gradient": one_extra_gradient(),
        "gap+smooth": make_probes("gap,smooth"),
        "corr": make_probes("corr"),
        "noise": make_probes("noise"),
        "all per-step": make_probes("gap,smooth,corr"),
        "all but sharpness": make_probes("gap,smooth,corr,noise"),
    }
    print(f"{'batch':>6} {'probes':>20} {'steps/s':>10} {'cost (x plain)':>15}")
    for batch in (4, 32, 500):
        steps = args.steps if batch < 500 else max(args.steps // 10, 100)
        best = dict.fromkeys(sets, 0.0)
        for _ in range(args.repeats):  # interleaved, so a slow spell hits every row alike
            for name, probes in sets.items():
                best[name] = max(best[name], rate(problem, spec, batch, steps, probes))
        for name, r in best.items():
            print(f"{batch:>6} {name:>20} {r:>10.0f} {best['plain'] / r:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
