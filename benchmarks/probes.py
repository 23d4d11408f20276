"""Cost of the per-step trajectory probes against the plain step, measured in the same run.

The two-moons MLP (2-64-64-2), SGD; model-steps per second with no probe, with the gap and
smoothness probes (one extra gradient), with all per-step probes (gap, smooth, corr, noise; no
sharpness), at batch 4, 32 and full batch. Target (issue 9): all per-step probes at most 1.8x the
plain step's time at batch 32.

    .venv/bin/python benchmarks/probes.py [--steps 20000]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    args = ap.parse_args()
    import optimorph
    from optimorph.probes.trajectory import make_probes

    problem = optimorph.problem("two-moons(n=500, noise=0.1, flip=0.1)")
    spec = "sgd(lr=power_law(0.15, tau=5e4, alpha=1))"
    sets = {
        "plain": [],
        "gap+smooth": make_probes("gap,smooth"),
        "all per-step": make_probes("gap,smooth,corr,noise"),
    }
    print(f"{'batch':>6} {'probes':>14} {'steps/s':>10} {'cost (x plain)':>15}")
    for batch in (4, 32, 500):
        steps = args.steps if batch < 500 else max(args.steps // 10, 100)
        base = None
        for name, probes in sets.items():
            r = rate(problem, spec, batch, steps, probes)
            base = base or r
            print(f"{batch:>6} {name:>14} {r:>10.0f} {base / r:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
