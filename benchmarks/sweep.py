"""Sweep throughput: one grid run in-process, on two local workers, on a two-worker Dask
LocalCluster, and as a loop of separate ``optimorph train`` processes (what a shell script does).

The grid (issue 18): 7 optimizers x 10 seeds x 3 precisions on the noisy-two-moons MLP, 500 steps
of batch 32. Every mode starts from an empty compilation cache of its own, so each pays the same
compilation; the peer runs one ``optimorph train`` per (optimizer, precision) with ``--seeds 10``
(the seeds of a point share a program there too). The table gives cells per minute and each
mode's speed against the peer, all measured in this run.

    .venv/bin/python benchmarks/sweep.py [--quick] [--keep DIR]

``--quick``: 3 optimizers x 3 seeds x 2 precisions, 100 steps (a smoke run).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPTIMIZERS = [
    "sgd(lr=0.1)",
    "momentum(lr=0.05, beta=0.9)",
    "nesterov(lr=0.05, beta=0.9)",
    "rmsprop(lr=1e-3, eps=1e-4)",
    "adam(lr=1e-3, eps=1e-4)",
    "adagrad(lr=0.05, eps=1e-4)",
    "lion(lr=3e-4)",
]
PRECISIONS = ["fp32", "bf16,hparams=fp32", "fp16,hparams=fp32"]
PROBLEM = "two-moons(n=500, noise=0.1, flip=0.1)"


def sweep_file(optimizers: list[str], precisions: list[str], seeds: int, steps: int) -> str:
    opts = "\n".join(f'[[optimizers]]\nspec = "{o}"\n' for o in optimizers)
    return (f'name = "bench"\nproblems = ["{PROBLEM}"]\nprecisions = {precisions!r}\n'
            f"seeds = {seeds}\n\n[settings]\nsteps = {steps}\nbatch_size = 32\n"
            f"eval_every = {steps // 5}\n\n{opts}").replace("'", '"')  # fmt: skip


def optimorph(*args: str, cache: Path) -> float:
    """Seconds one ``optimorph`` command takes, with its own compilation cache."""
    env = {**os.environ, "OPTIMORPH_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "optimorph.cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--keep", type=Path, default=None, help="write the stores here (kept)")
    args = ap.parse_args()
    quick, full = (OPTIMIZERS[:3], PRECISIONS[:2], 3, 100), (OPTIMIZERS, PRECISIONS, 10, 500)
    optimizers, precisions, seeds, steps = quick if args.quick else full
    cells = len(optimizers) * len(precisions) * seeds
    root = args.keep or Path(tempfile.mkdtemp(prefix="optimorph-bench-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    grid = root / "grid.toml"
    grid.write_text(sweep_file(optimizers, precisions, seeds, steps))
    print(f"{len(optimizers)} optimizers x {seeds} seeds x {len(precisions)} precisions = {cells} "
          f"cells, {steps} steps of batch 32 on {PROBLEM}; {os.cpu_count()} CPUs", flush=True)

    seconds: dict[str, float] = {}
    seconds["shell loop of optimorph train"] = sum(
        optimorph("train", "--problem", PROBLEM, "--optimizer", o, "--precision", p,
                  "--seeds", str(seeds), "--steps", str(steps), "--batch-size", "32",
                  "--eval-every", str(steps // 5), "--quiet",
                  "--out", str(root / f"train-{i}-{j}"), cache=root / "cache-train")
        for i, o in enumerate(optimizers) for j, p in enumerate(precisions)
    )  # fmt: skip
    print(f"  shell loop: {seconds['shell loop of optimorph train']:.1f} s", flush=True)
    for name, extra in (("sweep, in-process", []), ("sweep --workers 2", ["--workers", "2"])):
        tag = extra[-1] if extra else "1"
        seconds[name] = optimorph("sweep", str(grid), "--out", str(root / f"sweep-{tag}"),
                                  "--quiet", *extra, cache=root / f"cache-{tag}")  # fmt: skip
        print(f"  {name}: {seconds[name]:.1f} s", flush=True)
    try:
        import distributed
    except ImportError:
        print("  (distributed not installed: no LocalCluster row)")
    else:
        os.environ["OPTIMORPH_CACHE_DIR"] = str(root / "cache-dask")  # the workers inherit it
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "cache-dask")
        started = time.perf_counter()
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=logging.ERROR) as c:
            optimorph("sweep", str(grid), "--out", str(root / "sweep-dask"), "--quiet",
                      "--scheduler", c.scheduler_address, cache=root / "cache-dask")  # fmt: skip
        seconds["sweep on a 2-worker LocalCluster"] = time.perf_counter() - started
        print(f"  LocalCluster: {seconds['sweep on a 2-worker LocalCluster']:.1f} s "
              "(cluster start included)", flush=True)  # fmt: skip
    peer = seconds["shell loop of optimorph train"]
    print(f"\n{'mode':<36} {'seconds':>8} {'cells/min':>10} {'vs shell loop':>14}")
    for name, s in seconds.items():
        print(f"{name:<36} {s:8.1f} {60 * cells / s:10.1f} {peer / s:13.2f}x")
    print(f"\nstores under {root}" if args.keep else "")


if __name__ == "__main__":
    main()
