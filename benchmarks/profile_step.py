"""Where one `train` call's time goes, per compiled operation (XLA thunk).

Runs the engine benchmark's problem (noisy two moons, 2-64-64-2 MLP, SGD on a power-law
schedule) once to compile, then again under ``jax.profiler`` with a Perfetto trace, and sums
the trace's complete events by name: the time of each fusion, dot, copy and reduction of the
training program, with how many times it ran (a count near ``--steps`` is once per step).
The host's events (Python frames, dispatch, ``ThunkExecutor``, buffer allocation) are left out:
the rows are XLA's own operations, and their total against the call's wall time shows how much
the runtime and the host add.

    .venv/bin/python benchmarks/profile_step.py [--batch 4] [--seeds 10] [--steps 3000]
                                                [--precision fp32] [--x64] [--top 15]
                                                [--problem SPEC] [--optimizer SPEC]
                                                [--replicas 0] [--plain]

``--plain`` profiles the engine benchmark's other peer instead, the plain jitted JAX loop (one
seed-vmapped optax step per Python iteration): the same rows for the loop a user writes, so the
two programs' operations can be compared one by one (any --problem; the loop's optimizer is the
benchmark's SGD at fp32, so --optimizer, --precision and --replicas are refused with it).

Look up a row's operation in XLA's optimized HLO (``XLA_FLAGS=--xla_dump_to=DIR
--xla_dump_hlo_as_text``, the ``*chunk_lane*after_optimizations.txt`` module) by its name.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import PROBLEM, SPEC, plain_jax_loop  # noqa: E402


# The profiler's own and the host's events (Python frames, dispatch, buffers, thread pools).
# A Python loop's dispatch adds its own per call (the plain loop's DevicePut, ParseArguments).
HOST_EVENTS = ("$", "end:", "PjitFunction", "CommonPjRt", "shard_args", "Allocate", "Slinky",
               "Threadpool", "DevicePut", "ParseArguments", "Handle inputs")  # fmt: skip


def thunk_times(trace_dir: Path) -> tuple[collections.Counter, collections.Counter]:
    """(microseconds, calls) per operation name from the Perfetto trace under ``trace_dir``.

    Only innermost events count: a ``while`` or ``conditional`` thunk wraps the thunks of its
    body, which would otherwise be counted twice.
    """
    (path,) = trace_dir.rglob("perfetto_trace.json.gz")
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = collections.defaultdict(list)
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(HOST_EVENTS) and "Thunk" not in name:
            threads[e.get("pid"), e.get("tid")].append(e)
    spent, calls = collections.Counter(), collections.Counter()
    for evs in threads.values():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        open_, inner = [], set()
        for k, e in enumerate(evs):
            while open_ and evs[open_[-1]]["ts"] + evs[open_[-1]].get("dur", 0) <= e["ts"]:
                open_.pop()
            if open_:
                inner.add(open_[-1])  # the enclosing event is not innermost
            open_.append(k)
        for k, e in enumerate(evs):
            if k not in inner:
                spent[e["name"]] += e.get("dur", 0)
                calls[e["name"]] += 1
    return spent, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--x64", action="store_true", help="turn jax_enable_x64 on, as the CLI does")
    ap.add_argument("--top", type=int, default=15, help="rows to print")
    ap.add_argument("--problem", default=PROBLEM, help="a problem spec (default: the engine's)")
    ap.add_argument("--optimizer", default=SPEC, help="an optimizer spec (default: the engine's)")
    ap.add_argument("--replicas", type=int, default=0, help="noise replicas per run")
    ap.add_argument("--plain", action="store_true", help="profile the plain jitted JAX loop")
    args = ap.parse_args()
    if args.plain and (args.optimizer != SPEC or args.precision != "fp32" or args.replicas):
        ap.error("--plain profiles the engine benchmark's plain loop (SGD on its power-law "
                 "schedule, fp32, no replicas): drop --optimizer, --precision and --replicas")
    import jax

    jax.config.update("jax_enable_x64", args.x64)
    import optimorph

    problem = optimorph.problem(args.problem)

    plain = plain_jax_loop(problem, args.batch, args.seeds) if args.plain else None

    def run() -> float:
        start = time.perf_counter()
        if plain is not None:
            plain(args.steps)
            return time.perf_counter() - start
        optimorph.train(problem, args.optimizer, steps=args.steps, seeds=args.seeds,
                        batch_size=args.batch, eval_every=args.steps, progress=False,
                        keep_params=False, precision=args.precision,
                        replicas=args.replicas)  # fmt: skip
        return time.perf_counter() - start

    run()  # compile
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        wall = run()
        jax.profiler.stop_trace()
        spent, calls = thunk_times(Path(tmp))
    total = sum(spent.values())
    per_step = sum(1 for n in calls if calls[n] >= 0.9 * args.steps)
    what = "the plain jitted JAX loop" if plain is not None else "train"
    print(f"batch {args.batch}, {args.seeds} seeds, {args.steps} steps, {args.precision}, "
          f"x64 {'on' if args.x64 else 'off'}: {what} {wall * 1e3:.0f} ms under the profiler, "
          f"XLA operations {total / 1e3:.0f} ms; {per_step} run about once per step")  # fmt: skip
    print(f"{'ms':>9} {'share':>6} {'calls':>7} {'us/call':>8}  operation")
    for name, us in spent.most_common(args.top):
        print(f"{us / 1e3:9.1f} {us / total:6.1%} {calls[name]:7d} {us / calls[name]:8.2f}  {name}")


if __name__ == "__main__":
    main()
