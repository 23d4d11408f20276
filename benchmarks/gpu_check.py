"""The checks a session lent a GPU runs first, in one device call: do optimorph's answers hold on
the accelerator, and how fast is it there.

No GPU has been lent to this project so far, and a session's device time is 15 minutes (the
machine's start included), so this is prepared and tested on the CPU (``--backend cpu``) and
meant to be run as one command: ``bash benchmarks/gpu_check.sh`` (it installs the carried
wheels, points ``OPTIMORPH_DATA`` at the carried Fashion-MNIST and runs this with the GPU
image's ``python3``, whose JAX has CUDA). Each section is time-boxed, and one that fails is
recorded with its error and does not stop the others. Results: ``OUT/gpu_check.json``.

1. **environment**: JAX's version, backend and devices.
2. **rounding** on the device against NumPy's IEEE arithmetic, bit for bit: the emulated formats
   (fp16, bf16, e4m3, e5m2 and e3m4 by ``Format.round``, gradual underflow included) and the fp32
   update ``add_float32`` on pairs chosen to underflow (XLA flushes float32 subnormals on CPUs;
   on GPUs it may too, which this kernel exists to undo).
3. **training bits**: the same runs (Adam and SGD, two seeds, 200 steps) on the device and on
   the CPU backend of the same process, at fp64, fp32, fp16 and bf16 (hyperparameters kept in
   fp32, where Adam's b2 and eps survive): identical, or the largest
   relative difference (GPU reductions sum in another order: a difference is expected at fp32
   and fp64, and is what the noise floor exists to measure).
4. **engine speed**: ``train`` model-steps/s on the device for the engine benchmark's problem
   (noisy two moons, 2-64-64-2 MLP, SGD) at batches 4, 32 and 500 with 10 seeds, and on the
   proposal's full-scale MLP (784-256-256-10, Fashion-MNIST, batch 128, 10 seeds x 5 lanes),
   projected to proposal16's full training (issue 17).
5. **proposal16 medium**, the MLP's three jobs (``--set models=mlp``), end to end, with the
   recipe's own timing (a subprocess with what time is left).

    python3 benchmarks/gpu_check.py [--out DIR] [--budget 420] [--backend gpu|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ENGINE_PROBLEM = "two-moons(n=500, noise=0.1, flip=0.1)"
ENGINE_SPEC = "sgd(lr=power_law(0.15, tau=5e4, alpha=1.0))"
FULL_MLP = "fashion-mnist(model=mlp, widths=[256, 256], n_train=60000, n_test=10000)"


def run_section(report: dict, name: str, deadline: float, fn) -> None:
    """Run one section into ``report[name]``: its result, or its error (the next section still
    runs), and its wall time; skipped once the budget is spent."""
    if time.perf_counter() > deadline:
        report[name] = {"skipped": "out of time"}
        return
    started = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as err:  # noqa: BLE001 - a failing section must not stop the others
        report[name] = {"error": f"{type(err).__name__}: {err}",
                        "traceback": traceback.format_exc(limit=6)}  # fmt: skip
    report[name]["wall_s"] = round(time.perf_counter() - started, 2)
    print(f"== {name}: {json.dumps(report[name], default=str)[:1500]}", flush=True)


def environment(jax) -> dict:
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "x64": bool(jax.config.jax_enable_x64),
            "python": sys.version.split()[0]}  # fmt: skip


def rounding_bits(jax, n: int = 1 << 20) -> dict:
    """Format.round and add_float32 on the default device against NumPy, bit for bit."""
    import jax.numpy as jnp
    import ml_dtypes
    import numpy as np

    from optimorph.precision.formats import parse_format
    from optimorph.precision.rounding import add_float32

    rng = np.random.default_rng(0)
    # Magnitudes from 2^-150 to 2^20: subnormals of every format, ties, overflow of e4m3.
    x = np.ldexp(rng.uniform(1, 2, n), rng.integers(-150, 20, n)) * rng.choice([-1, 1], n)
    x[:64] = np.ldexp(np.arange(1, 65) * 0.5 + 1, -25)  # exact ties near fp16's smallest
    out = {}
    peers = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "e4m3": ml_dtypes.float8_e4m3,
             "e5m2": ml_dtypes.float8_e5m2, "e3m4": ml_dtypes.float8_e3m4}  # fmt: skip
    for name, dtype in peers.items():
        fmt = parse_format(name)
        finite = np.abs(x) <= fmt.max_value  # overflow is the formats' own business
        ours = np.asarray(jax.jit(fmt.round)(jnp.asarray(x))).astype(np.float64)
        ref = x.astype(dtype).astype(np.float64)
        differ = int(np.sum(ours[finite].view(np.int64) != ref[finite].view(np.int64)))
        out[name] = {"compared": int(finite.sum()), "differ": differ}
    p = np.ldexp(rng.uniform(1, 2, n), rng.integers(-149, -90, n)).astype(np.float32)
    u = (-p * rng.uniform(0.5, 1.5, n)).astype(np.float32)  # cancellations into subnormals
    ours = np.asarray(jax.jit(add_float32)(jnp.asarray(p), jnp.asarray(u)))
    ref = p + u  # NumPy: IEEE float32 with gradual underflow
    native = np.asarray(jax.jit(jnp.add)(jnp.asarray(p), jnp.asarray(u)))
    bits = lambda a: a.view(np.int32)  # noqa: E731
    out["add_float32"] = {"compared": n, "differ": int(np.sum(bits(ours) != bits(ref))),
                          "native_add_differs": int(np.sum(bits(native) != bits(ref)))}  # fmt: skip
    out["all_exact"] = all(v["differ"] == 0 for v in out.values() if isinstance(v, dict))
    return out


def training_bits(jax) -> dict:
    """The same runs on the default device and on the CPU backend of this process."""
    import numpy as np

    import optimorph

    cpu = jax.devices("cpu")[0]
    prob = optimorph.problem(ENGINE_PROBLEM)
    out = {}
    for precision in ("fp64", "fp32", "fp16,hparams=fp32", "bf16,hparams=fp32"):
        kw = dict(seeds=2, steps=200, batch_size=32, precision=precision, progress=False)
        # eps=1e-8 is 0 in fp16 and b2=0.999 is 1 in bf16 (NaN from step 1): wide hparams.
        opts = ["adam(lr=1e-3, eps=1e-4)", "sgd(lr=0.1)"]
        here = optimorph.train(prob, opts, **kw)
        with jax.default_device(cpu):
            there = optimorph.train(prob, opts, **kw)
        a = np.concatenate([np.ravel(v) for p in here.final_params for v in jax.tree.leaves(p)])
        b = np.concatenate([np.ravel(v) for p in there.final_params for v in jax.tree.leaves(p)])
        a, b = a.astype(np.float64), b.astype(np.float64)
        scale = np.maximum(np.abs(b), 1e-30)
        out[precision] = {"identical": bool(np.array_equal(a, b, equal_nan=True)),
                          "nan": int(np.isnan(a).sum()),
                          "max_rel_diff": float(np.nanmax(np.abs(a - b) / scale)),
                          "params_differ": int(np.sum((a != b) & ~(np.isnan(a) & np.isnan(b)))),
                          "params": int(a.size)}  # fmt: skip
    return out


def engine_speed(jax, quick: bool = False) -> dict:
    """Model-steps/s of train on the default device (compilation excluded: best of 3)."""
    import optimorph

    def rate(prob, spec, seeds, batch, steps, **kw) -> float:
        args = dict(steps=steps, seeds=seeds, batch_size=batch, eval_every=steps,
                    progress=False, keep_params=False, **kw)  # fmt: skip
        optimorph.train(prob, spec, **args)
        best = min(_timed(lambda: optimorph.train(prob, spec, **args)) for _ in range(3))
        return seeds * steps / best

    prob = optimorph.problem(ENGINE_PROBLEM)
    out = {f"two-moons batch {b}, 10 seeds": round(rate(prob, ENGINE_SPEC, 10, b, s))
           for b, s in ((4, 6000), (32, 3000), (500, 1000)) if not quick or b == 32}  # fmt: skip
    try:
        full = optimorph.problem(FULL_MLP)
    except Exception as err:  # noqa: BLE001 - no Fashion-MNIST carried: say so, go on
        out["full MLP"] = f"skipped: {err}"
        return out
    steps = 20 if quick else 200
    seed_steps = rate(full, "adam(lr=1e-3, eps=1e-4)", 10, 128, steps, replicas=4)
    out["full MLP, 10 seeds x (1 + 4 replicas), model-steps/s"] = round(seed_steps * 5)
    # proposal16 full: 10 optimizers x 9,375 steps x 3 precisions of one 10-seed call each
    # (fp16 and fp64 taken at this fp32 rate), training only.
    out["proposal16 full MLP training projected, hours"] = round(
        10 * 3 * 9375 / (seed_steps / 10) / 3600, 2)  # fmt: skip
    return out


def proposal16_medium(budget_s: float, out_dir: Path, quick: bool = False) -> dict:
    """The medium recipe's MLP jobs end to end, as a subprocess limited to what is left: one
    worker process (the recipe's default is one per core; on a GPU each would claim it)."""
    run_dir = out_dir / "proposal16-medium-mlp"
    cmd = [sys.executable, "-c", "import sys; from optimorph.cli import entry; sys.exit(entry())",
           "run", "proposal16", "--scale", "quick" if quick else "medium",
           "--set", "models=['mlp']", "--set", "workers=1", "--out", str(run_dir),
           "--overwrite", "--quiet"]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(budget_s, 1))
    result = {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - started, 1),
              "stderr_tail": proc.stderr[-1500:]}  # fmt: skip
    doc = run_dir / "proposal16.json"
    if doc.exists():
        data = json.loads(doc.read_text())
        result["timing"] = data["timing"]
        result["classes"] = {p: len(c) for p, c in data["problems"]["mlp"]["classes"].items()}
    return result


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu-check")))
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all sections")
    ap.add_argument("--backend", default=None, help="force a JAX platform (cpu to test this)")
    ap.add_argument("--quick", action="store_true", help="small sizes: to test this on a CPU")
    args = ap.parse_args()
    if args.backend:
        wanted = args.backend if args.backend == "cpu" else f"{args.backend},cpu"
        os.environ["JAX_PLATFORMS"] = wanted
    import jax

    jax.config.update("jax_enable_x64", True)  # as the optimorph command runs
    deadline = time.perf_counter() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    run_section(report, "environment", deadline, lambda: environment(jax))
    run_section(report, "rounding", deadline, lambda: rounding_bits(jax))
    run_section(report, "training bits", deadline, lambda: training_bits(jax))
    run_section(report, "engine speed", deadline, lambda: engine_speed(jax, args.quick))
    run_section(report, "proposal16 medium (MLP)", deadline,
                lambda: proposal16_medium(deadline - time.perf_counter(), args.out, args.quick))
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
