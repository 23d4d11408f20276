"""Block-format throughput against gfloat and ml_dtypes, and the training cost of MXFP8 states,
measured in the same run.

1. Quantize-dequantize of a 4M-element float32 tensor (2048 x 2048, blocks along the last axis)
   in every block format: optimorph's compiled ``fmt.round`` against the peers that can compute
   the same values, each checked equal to optimorph's output before it is timed:

   - gfloat (Graphcore's OCP MX reference): block scales in NumPy by the spec's floor rule,
     elements by ``gfloat.round_ndarray`` (its vectorized path; ``quantize_block`` is a Python
     loop per block, hours for 4M elements); MX formats and per-tensor FP8;
   - ml_dtypes: the same NumPy scales, elements by a cast to ml_dtypes' float8/float6/float4
     types and back (no INT8 element type, so not mxint8);
   - the code maps (bnb8, int8, ao4) have neither peer (bitsandbytes and torchao are not
     installed here): NumPy's ``searchsorted`` over the code midpoints stands in. It divides
     x / absmax correctly rounded; XLA's float32 division on CPU is not (1 ulp off for about a
     quarter of the elements), so a few elements next to a code midpoint take the neighbouring
     code (measured: 1 of 4M for bnb8, 7 for int8); the column says how many.

   Per-tensor FP8 compiled can differ from the same function run eagerly: XLA may rewrite
   ``q * (1 / s)`` with ``s = 448 / amax`` (seen on a 1M-element tensor: about 97% of the
   elements 1 ulp apart), so "peers equal" for fp8 compares against the compiled output that
   is timed and may say NO where the eager output agrees bit for bit.

``--quick`` (under a minute on 2 cores): a 1M-element tensor, peers timed once, 300 steps,
no bnb8-state run.

2. Training cost: Adam with its state in MXFP8 (E4M3) against fp32 states, on the digits MLP
   (64-256-256-10, batch 128), steps per second of ``optimorph.train`` (compiled first, best of
   ``--repeats``). Target (issue 20): at most 1.5x the fp32-state time.

    .venv/bin/python benchmarks/precision.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

MX_PEERS = {  # optimorph name: (gfloat format info name, ml_dtypes type name or None)
    "mxfp8e4m3": ("format_info_ocp_e4m3", "float8_e4m3fn"),
    "mxfp8e5m2": ("format_info_ocp_e5m2", "float8_e5m2"),
    "mxfp6e3m2": ("format_info_ocp_e3m2", "float6_e3m2fn"),
    "mxfp6e2m3": ("format_info_ocp_e2m3", "float6_e2m3fn"),
    "mxfp4": ("format_info_ocp_e2m1", "float4_e2m1fn"),
    "mxint8": ("format_info_ocp_int8", None),
}
FP8_PEERS = {"fp8e4m3": MX_PEERS["mxfp8e4m3"], "fp8e5m2": MX_PEERS["mxfp8e5m2"]}
CODE_MAPS = ("bnb8", "int8", "ao4")


def best_seconds(fn, repeats: int) -> float:
    """The best wall time of ``repeats`` calls (this machine's timings wander by 20-30%)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ours(name: str, x_np: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    import jax
    import jax.numpy as jnp

    from optimorph.precision import parse_format

    fmt = parse_format(name)
    x = jnp.asarray(x_np)
    fn = jax.jit(fmt.round)
    out = np.asarray(fn(x).block_until_ready())  # compile
    return best_seconds(lambda: fn(x).block_until_ready(), repeats), out


def mx_scales(x: np.ndarray, emax_elem: int, block: int = 32) -> np.ndarray:
    """The spec's floor rule in NumPy: 2**(floor(log2 amax) - emax_elem) per block, clipped to
    E8M0's range; an all-zero block gets 2**-127."""
    blocks = x.reshape(*x.shape[:-1], -1, block)
    amax = np.max(np.abs(blocks), axis=-1, keepdims=True).astype(np.float64)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(amax)) - emax_elem
    e = np.where(amax > 0, np.clip(e, -127, 127), -127)
    return np.exp2(e)


def peer_mx(kind: str, name: str, x: np.ndarray) -> np.ndarray:
    """MX quantize-dequantize with the element rounding of peer ``kind`` (gfloat, ml_dtypes)."""
    import gfloat
    import ml_dtypes
    from gfloat import formats as gf

    fi = getattr(gf, MX_PEERS[name][0])
    blocks = x.reshape(*x.shape[:-1], -1, 32).astype(np.float64)
    scales = mx_scales(x, fi.emax)
    scaled = blocks / scales
    if kind == "gfloat":
        q = gfloat.round_ndarray(fi, scaled, sat=True)  # saturating, as the spec's conversion
    else:  # ml_dtypes' casts overflow to NaN: saturate first
        dtype = getattr(ml_dtypes, MX_PEERS[name][1])
        q = np.clip(scaled, -fi.max, fi.max).astype(dtype).astype(np.float64)
    return (q * scales).reshape(x.shape).astype(np.float32)


def peer_fp8(kind: str, name: str, x: np.ndarray) -> np.ndarray:
    """Per-tensor scaled FP8: s = max_elem / amax in float32, q = fl8(x s), read as q * fl(1/s)."""
    import gfloat
    import ml_dtypes
    from gfloat import formats as gf

    fi = getattr(gf, FP8_PEERS[name][0])
    top = np.float32(fi.max)
    s = top / np.maximum(np.max(np.abs(x)), np.float32(1e-12))
    scaled = np.clip(x * s, -top, top)
    if kind == "gfloat":
        q = gfloat.round_ndarray(fi, scaled.astype(np.float64), sat=True).astype(np.float32)
    else:
        q = scaled.astype(getattr(ml_dtypes, FP8_PEERS[name][1])).astype(np.float32)
    return q * (np.float32(1) / s)


def numpy_code_map(name: str, x: np.ndarray) -> np.ndarray:
    """Blockwise absmax with a code map in NumPy: nearest code by the midpoints (ties down)."""
    from optimorph.precision import parse_format

    fmt = parse_format(name).for_slot("m")  # the signed map
    codes = fmt.codes
    mids = (codes[:-1] + codes[1:]) / np.float32(2)
    blocks = x.reshape(-1, fmt.block_size)
    absmax = np.max(np.abs(blocks), axis=-1, keepdims=True)
    normed = np.where(absmax > 0, blocks / np.where(absmax > 0, absmax, 1), 0)
    idx = np.searchsorted(mids, normed, side="left")
    return (codes[idx] * absmax).reshape(x.shape)


def throughput_table(size: int, repeats: int, peer_repeats: int) -> None:
    rng = np.random.default_rng(0)
    side = int(round(size**0.5))
    # Heavy-tailed magnitudes (a spread of 2**+-8 per row) so blocks differ in scale.
    x = (rng.standard_normal((side, side)) * 2.0 ** rng.integers(-8, 8, (side, 1))).astype(
        np.float32
    )
    n = x.size
    print(f"quantize-dequantize of {n:,} float32 elements ({side} x {side}); Melem/s, best of "
          f"{repeats} (optimorph) / {peer_repeats} (peers); x = optimorph's speed over the "
          "peer's")  # fmt: skip
    print(f"{'format':<11} {'optimorph':>10} {'gfloat':>9} {'x gfloat':>9} {'ml_dtypes':>10} "
          f"{'x ml_dt':>8} {'numpy':>8} {'x numpy':>8}  peers equal")  # fmt: skip
    names = [*MX_PEERS, *FP8_PEERS, *CODE_MAPS]
    for name in names:
        t_ours, out = ours(name if name not in CODE_MAPS else f"{name}(signed=true)", x, repeats)
        peers = {}
        if name in CODE_MAPS:
            peers["numpy"] = lambda name=name: numpy_code_map(name, x)
        else:
            peer = peer_mx if name in MX_PEERS else peer_fp8
            peers["gfloat"] = lambda name=name, peer=peer: peer("gfloat", name, x)
            if (MX_PEERS.get(name) or FP8_PEERS[name])[1] is not None:
                peers["ml_dtypes"] = lambda name=name, peer=peer: peer("ml_dtypes", name, x)
        rates, same = {}, []
        for kind, fn in peers.items():
            differ = int(np.sum(fn() != out))
            same.append(f"{kind} {'yes' if not differ else f'NO: {differ} differ'}")
            rates[kind] = n / best_seconds(fn, peer_repeats) / 1e6
        rate = n / t_ours / 1e6

        def col(kind: str, width: int) -> str:
            if kind not in rates:
                return f"{'-':>{width}} {'-':>{width - 1}}"
            return f"{rates[kind]:>{width}.1f} {rate / rates[kind]:>{width - 1}.1f}"

        print(f"{name:<11} {rate:>10.1f} {col('gfloat', 9)} {col('ml_dtypes', 9)} "
              f"{col('numpy', 8)}  {', '.join(same)}")  # fmt: skip


def training_cost(steps: int, repeats: int, quick: bool = False) -> None:
    import optimorph

    prob = optimorph.problem("digits(model=mlp, widths=[256, 256])")
    kw = dict(seeds=1, steps=steps, batch_size=128, eval_every=steps, progress=False,
              keep_params=False)  # fmt: skip
    policies = {
        "fp32 states": "fp32",
        "MXFP8 states": "fp32,state=mxfp8e4m3",
        "MXFP8 states, blocks down axis 0": "fp32,state=mxfp8e4m3(axis=0)",
        "bnb8 states": "fp32,state=bnb8",
        # Tseng et al.'s MXFP4 backward pass: quantized, transformed operands, block products.
        "MXFP4 backward products (sr, rht)": "fp32,backward=mxfp4(rounding=stochastic,"
        "transform=rht)",
        "MXFP4 in every product": "fp32,forward=mxfp4,backward=mxfp4(rounding=stochastic,"
        "transform=rht)",
    }
    if quick:
        del policies["bnb8 states"], policies["MXFP4 in every product"]
    times = {}
    for label, policy in policies.items():
        optimorph.train(prob, "adam(lr=1e-3)", precision=policy, **kw)  # compile
        times[label] = best_seconds(
            lambda policy=policy: optimorph.train(prob, "adam(lr=1e-3)", precision=policy, **kw),
            repeats,
        )
    base = times["fp32 states"]
    print(f"\nAdam on {prob.name} ({prob.info.get('n_params', '?')} params), batch 128, {steps} "
          f"steps, best of {repeats}:")  # fmt: skip
    for label, t in times.items():
        print(f"  {label:<34} {steps / t:>8.0f} steps/s  {t / base:>5.2f}x the fp32-state time")
    print("  (the products' rows emulate MX arithmetic on a CPU without MX units: their cost is "
          "the emulation's, not the format's)")
    print("  target (issue 20): MXFP8 states at most 1.5x the fp32-state time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4 * 1024 * 1024, help="elements (a square)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000, help="training steps per timed run")
    ap.add_argument("--quick", action="store_true", help="under a minute: fewer repeats/steps")
    args = ap.parse_args()
    peer_repeats = args.repeats
    if args.quick:
        args.size, args.repeats, peer_repeats, args.steps = 1024 * 1024, 3, 1, 300
    start = time.perf_counter()
    throughput_table(args.size, args.repeats, peer_repeats)
    middle = time.perf_counter()
    training_cost(args.steps, args.repeats, quick=args.quick)
    print(f"(throughput {middle - start:.0f} s, training {time.perf_counter() - middle:.0f} s)")


if __name__ == "__main__":
    main()
