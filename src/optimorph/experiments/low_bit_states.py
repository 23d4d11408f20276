"""Low-bit optimizer states: is 8-bit (4-bit, FP8, MX) Adam still Adam on this problem?

Adam and AdamW with fp32 states against the states libraries store in fewer bits (issue 20):

============  ==========================================================  ==================
name          m and v stored as                                           source
============  ==========================================================  ==================
``bnb8``      bitsandbytes' 8-bit dynamic map, absmax per block of 256    8-bit Adam
``bnb8-lib``  the same, tensors under 4096 elements kept in fp32          8-bit Adam's default
``ao4``       torchao's 4-bit maps, absmax per block of 128               torchao 4-bit AdamW
``fp8-lm``    m in FP8 E4M3 with one scale per tensor, v in fp16          FP8-LM
``mxfp8``     OCP MXFP8 (E4M3 elements, an E8M0 scale per 32)             OCP MX v1.0
``mxfp6``     OCP MXFP6 (E3M2 elements)                                   OCP MX v1.0
``mxfp4``     OCP MXFP4 (E2M1 elements)                                   OCP MX v1.0
============  ==========================================================  ==================

The MX states take their blocks down axis 0 (``mxfp8e4m3(axis=0)``): least squares' weight is a
d x 1 column, so a block holds 32 coordinates, as it would for a flattened state. (The MX
default axis, the last axis longer than 1, now blocks a column the same way; the axis stays
written out so that the policies and their stored names are what earlier runs used.)

The parameters stay in one format (``bf16``, and ``fp32`` in the full variant); the reference is
the same optimizer with fp32 states at the same parameter format (``bf16,state=fp32``). A state
format is **p-equivalent** to the reference by optimorph's noise-floor rule
(:mod:`optimorph.equivalence.compare`, DESIGN.md section 3): each run is trained by
:func:`~optimorph.equivalence.compare.measure` with its noise replicas (seeds paired), and

    d(t) = ||theta_ref(t) - theta_low(t)|| <= C max(N_ref(t), N_low(t), u ||theta_ref(t)||)

at every evaluation after step 0, on the median over seeds of the ratio (d/floor below), u the
parameter format's unit roundoff, and the final loss does not differ beyond doubt and beyond
the margin (:func:`~optimorph.equivalence.compare.outcome_differs`: "different (final loss)"
otherwise); a run that went NaN/inf where the other did not is different.
The two runs differ in their precision policy, not their optimizer, so the state maps of
``compare`` are the identity and are not measured. Beside it: the paired difference of the
final loss (low-bit minus reference; ``test/loss``) with its 95% CI, TOST at a margin of 5% of
the larger mean, and the state's bytes per parameter (:func:`optimorph.precision.
state_bytes_per_param`, scales included).

Problems: least squares with feature scales spread over h (``least-squares(hetero=h)``, several
h), where the heterogeneity of the gradient inside a quantization block grows with h; and, in
the full variant, the Fashion-MNIST MLP (skipped, its finding open, when the data is missing).

Findings are fixed in :func:`findings` before any run (STYLE.md item 11); the quick variant
runs Adam only, at bf16 parameters, on three h values and marks the claims it cannot judge.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from optimorph import stats
from optimorph.equivalence.compare import DEFAULTS, floor_ratio, outcome_differs
from optimorph.experiments.cells import Cell, clear, train_cells
from optimorph.experiments.findings import above, all_of, at_most, below, finding, within
from optimorph.precision import precision as make_precision
from optimorph.problems import DatasetNotFound, problem
from optimorph.results import store

__all__ = ["LowBitConfig", "STATES", "run", "findings", "verdict_rows"]

# m and v of optimorph's adam / adamw (slots "m", "v"); "fp32" is the reference.
STATES = {
    "fp32": "state=fp32",
    "bnb8": "m=bnb8,v=bnb8",
    "bnb8-lib": "m=bnb8(min_size=4096),v=bnb8(min_size=4096)",
    "ao4": "m=ao4,v=ao4",
    "fp8-lm": "m=fp8e4m3,v=fp16",
    "mxfp8": "m=mxfp8e4m3(axis=0),v=mxfp8e4m3(axis=0)",
    "mxfp6": "m=mxfp6e3m2(axis=0),v=mxfp6e3m2(axis=0)",
    "mxfp4": "m=mxfp4(axis=0),v=mxfp4(axis=0)",
}
STALL = DEFAULTS["stall_limit"]  # compare's: a run with more of its updates absorbed stalled
MARGIN = 0.05  # TOST margin: a fraction of the larger mean final loss, as compare's default
# The p-equivalence rules read d/floor, counted infinite when the verdict is "different" for
# another reason (the final loss differs beyond doubt and beyond the margin, outcome_differs;
# the low-bit run diverged): the verdict's tests in one number.
_RATIO = "d/floor (inf if the verdict is different for another reason)"


@dataclasses.dataclass(frozen=True)
class LowBitConfig:
    """Every setting of the recipe, fixed before any number is seen."""

    heteros: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    n: int = 512  # least squares: examples
    d: int = 256  # least squares: features (one bnb8 block, eight MX blocks)
    optimizers: tuple[str, ...] = ("adam(lr=0.01)", "adamw(lr=0.01, weight_decay=0.01)")
    params: tuple[str, ...] = ("bf16", "fp32")  # parameter formats; the first is the headline
    states: tuple[str, ...] = tuple(STATES)  # keys of STATES; "fp32" is the reference
    seeds: int = 5
    steps: int = 1000
    batch_size: int = 64
    evals: int = 20  # evaluations after step 0 (where d/floor is measured)
    replicas: int = 4
    C: float = 10.0
    mlp: bool = True  # also the Fashion-MNIST MLP
    mlp_problem: str = "fashion-mnist(model=mlp, widths=[256, 256])"
    mlp_steps: int = 500
    mlp_batch_size: int = 128
    mlp_optimizer: str = "adam(lr=1e-3)"
    workers: int | None = None  # processes training the cells (None: one per core)

    def check(self) -> None:
        """Fail before any work (the recipe runner calls this before it claims the run
        directory): unknown states, or no fp32 reference among them."""
        unknown = [s for s in self.states if s not in STATES]
        if unknown or "fp32" not in self.states:
            raise ValueError(
                f"low-bit-states: states must include fp32 (the reference) and be among "
                f"{', '.join(STATES)}; got {list(self.states)}"
            )

    @classmethod
    def quick(cls) -> LowBitConfig:
        """Adam only, bf16 parameters, h = 1 and 10**4, fp32 / bnb8 / MXFP8 states, 3 seeds
        of 150 steps (each run costs about 5 s, mostly compilation): about 25 s on 2 cores
        (two processes)."""
        return cls(
            heteros=(1.0, 10000.0),
            optimizers=("adam(lr=0.01)",),
            params=("bf16",),
            states=("fp32", "bnb8", "mxfp8"),
            seeds=3,
            steps=150,
            evals=10,
            replicas=2,
            mlp=False,
        )


def policy(params: str, state: str) -> str:
    """The precision spec of parameters in ``params`` and states ``state`` (a key of STATES)."""
    return str(make_precision(f"{params},{STATES[state]}"))


def run(config: LowBitConfig, out: Path, progress: bool = True) -> list[dict]:
    """Train every cell (one file each under ``out/cells`` as it finishes: a killed run
    resumes), store ``table_verdicts.json`` (one row per problem, optimizer, parameter format
    and state format) and return the findings."""
    config.check()
    groups = [  # (cell name prefix, label, h, problem spec, optimizers, steps, batch size)
        (f"ls-h{h:g}", f"least squares h={h:g}", h,
         f"least-squares(n={config.n}, d={config.d}, hetero={h:g})", config.optimizers,
         config.steps, config.batch_size)
        for h in config.heteros
    ]  # fmt: skip
    skipped = None
    if config.mlp:
        try:
            spec = problem(config.mlp_problem).name  # loaded once here: a missing set is named
        except DatasetNotFound as err:
            skipped = err.args[0].splitlines()[0]
            print(f"low-bit-states: {skipped}; skipping the Fashion-MNIST MLP", file=sys.stderr)
        else:
            groups.append(("mlp", "fashion-mnist mlp", None, spec, (config.mlp_optimizer,),
                           config.mlp_steps, config.mlp_batch_size))  # fmt: skip
    cells = [
        Cell(f"{name}-{params}-{state}", spec, tuple(optimizers), policy(params, state),
             config.seeds, steps, batch_size, max(steps // config.evals, 1), config.replicas)
        for name, _, _, spec, optimizers, steps, batch_size in groups
        for params in config.params for state in config.states
    ]  # fmt: skip
    runs = train_cells("low-bit-states", cells, out, workers=config.workers, progress=progress)
    rows = []
    for name, label, h, _, optimizers, _, _ in groups:
        for params in config.params:
            u = make_precision(params).unit_roundoff
            ref = runs[f"{name}-{params}-fp32"]
            for o, opt in enumerate(optimizers):
                for state in config.states:
                    row = {"problem": label, "h": h, "optimizer": opt, "params": params,
                           "states": state, "policy": policy(params, state)}  # fmt: skip
                    row.update(verdict_rows(ref, runs[f"{name}-{params}-{state}"], o, u,
                                            config.C))  # fmt: skip
                    rows.append(row)
    store.write_json(out, "table_verdicts", rows)
    clear(out)
    return findings(config, rows, skipped)


def verdict_rows(ref: Any, low: Any, o: int, u: float, C: float) -> dict:
    """The verdict of optimizer ``o`` trained with low-bit states (``low``, a training cell's
    result, :func:`optimorph.experiments.cells.train_cell`, or a
    :func:`~optimorph.equivalence.compare.measure` result) against its fp32-state run (``ref``):
    bytes per parameter, the stalled fractions, d/floor, outcome, the paired final-loss
    difference and TOST."""
    a, b = ref.result, low.result
    d_floor = floor_ratio(ref, o, low, o, u).max_median
    broke_ref, broke_low = bool((a.diverged_at[o] >= 0).any()), bool((b.diverged_at[o] >= 0).any())
    if broke_low and not broke_ref:
        outcome = "different (low-bit run diverged)"
    elif broke_ref:
        outcome = "undecidable (reference diverged)"
    else:
        outcome = "equivalent" if d_floor <= C else "different"
    key = "test/loss" if "test/loss" in a.evals else "train/loss"
    fa, fb = b.evals[key][o, :, -1], a.evals[key][o, :, -1]  # low-bit minus reference
    if outcome == "equivalent" and outcome_differs(fa, fb, MARGIN):
        outcome = "different (final loss)"  # within the floor, but the loss clearly differs
    with np.errstate(all="ignore"):
        test = stats.paired_t_test(fa, fb)
        tost = stats.tost(fa, fb, MARGIN, relative=True)
    return {
        "bytes_per_param": float(b.config["state_bytes_per_param"][o]),
        "stalled_ref": _stalled(a, o),
        "stalled": _stalled(b, o),
        "d_floor": _finite(d_floor),
        "outcome": outcome,
        "final_loss": _finite(float(np.mean(fa))),
        "final_diff": _finite(float(test.mean_diff)),
        "diff_ci_low": _finite(float(test.ci_low)),
        "diff_ci_high": _finite(float(test.ci_high)),
        "tost_p": _finite(float(tost.p_value)),
    }


def _stalled(result: Any, o: int) -> float | None:
    """The fraction of optimizer ``o``'s nonzero updates that rounding to the parameter format
    absorbed, averaged over seeds and steps as ``compare`` does (None: not tracked). Above
    ``compare``'s stall limit the run counts as stalled: its parameters mostly stopped moving,
    and it measures the format's resolution more than the optimizer."""
    stalled = result.stalled  # measure() and the cells always carry it (None: not tracked)
    if stalled is None or not np.isfinite(stalled[o]).any():
        return None
    return _finite(float(np.nanmean(np.asarray(stalled[o], np.float64))))  # the same from a file


def _finite(x: float) -> float | None:
    """JSON holds no inf or NaN: None for 'not measured' (a diverged run)."""
    return x if math.isfinite(x) else None


def state_bytes(config: LowBitConfig, state: str) -> float:
    """Bytes per parameter of Adam's state in ``state`` at the headline parameter format, on
    the least-squares weight (d x 1); shapes only, nothing is trained."""
    import jax

    from optimorph.optimizers import resolve
    from optimorph.precision import state_bytes_per_param

    prob = problem(f"least-squares(n={config.n}, d={config.d})")
    shapes = jax.eval_shape(prob.init, jax.random.key(0))
    tx = resolve(config.optimizers[0]).build()
    return state_bytes_per_param(policy(config.params[0], state), tx, shapes)


def _g(x: float | None) -> str:
    return "n/a (a seed diverged)" if x is None else f"{x:.3g}"


def findings(config: LowBitConfig, rows: list[dict], skipped: str | None = None) -> list[dict]:
    """The recipe's claims, each with its rule fixed here before running (STYLE.md item 11).
    ``skipped``: the first line of the DatasetNotFound message when the MLP could not run."""
    C, h0, hmax = config.C, config.heteros[0], config.heteros[-1]
    adam, head = config.optimizers[0], config.params[0]

    def cell(state, h=h0, params=head, optimizer=adam, problem_=None):
        label = problem_ or f"least squares h={h:g}"
        for r in rows:
            if (r["problem"], r["optimizer"], r["params"], r["states"]) == (
                label, optimizer, params, state
            ):  # fmt: skip
                return r
        return None

    def ratio(r) -> float:
        """d/floor for a rule: inf when the verdict is "different" for another reason than the
        distance (the low-bit run diverged, by NaN or by the engine's loss blow-up rule with
        finite parameters; the final loss differs beyond doubt and beyond the margin), NaN if
        absent or undecidable."""
        if r is None or r["outcome"].startswith("undecidable"):
            return math.nan
        if r["d_floor"] is None or r["outcome"].startswith("different ("):
            return math.inf
        return r["d_floor"]

    def text(r) -> str:
        if r is None:
            return "not run"
        df = "inf (diverged)" if r["d_floor"] is None else f"{r['d_floor']:.3g}"
        return f"{r['states']}: d/floor {df}, {r['outcome']}"

    where = f"least squares h={h0:g}, {adam}, {head} parameters"
    out = []
    ref = cell("fp32")
    stall = math.nan if ref is None or ref.get("stalled_ref") is None else ref["stalled_ref"]
    by_h = [(h, cell("fp32", h)) for h in config.heteros]
    out.append(finding(
        f"the headline's reference is not stalled: fp32-state Adam at {head} parameters has at "
        f"most {STALL:.0%} of its nonzero updates absorbed by rounding, over seeds and steps "
        f"(compare's stall limit; {where}); otherwise the {head}-parameter claims measure "
        "stagnation more than state precision",
        "fraction absorbed by h: " + ", ".join(
            f"h={h:g}: " + ("n/a" if r is None or r.get("stalled_ref") is None
                            else f"{r['stalled_ref']:.3f}") for h, r in by_h),
        at_most(STALL, "fraction of updates absorbed").judge(stall), judged_at_quick=False,
    ))  # fmt: skip
    bnb = cell("bnb8")
    out.append(finding(
        f"8-bit blockwise Adam (bnb8 m and v) is p-equivalent to fp32 Adam at {head} "
        f"parameters ({where})",
        text(bnb), at_most(C, _RATIO).judge(ratio(bnb)),
    ))  # fmt: skip
    sweep = [(h, cell("bnb8", h)) for h in config.heteros]
    stops = next((h for h, r in sweep if ratio(r) > C), None)
    out.append(finding(
        f"... and it stops being so as h grows: not p-equivalent at the largest h ({hmax:g})",
        "d/floor by h: " + ", ".join(f"h={h:g}: {ratio(r):.3g}" for h, r in sweep)
        + (f"; first h where d/floor > C: {stops:g}" if stops is not None
           else "; p-equivalent at every h of the sweep"),
        above(C, f"d/floor at h={hmax:g}").judge(ratio(cell("bnb8", hmax))),
        judged_at_quick=False,
    ))  # fmt: skip
    tost_p = bnb["tost_p"] if bnb and bnb["tost_p"] is not None else math.nan
    out.append(finding(
        f"8-bit Adam's final loss equals fp32 Adam's within {MARGIN:.0%} (paired TOST over "
        f"seeds, {where})",
        f"final loss difference (bnb8 - fp32) {_g(bnb['final_diff'])} (95% CI "
        f"{_g(bnb['diff_ci_low'])}..{_g(bnb['diff_ci_high'])}) at a final loss of "
        f"{_g(bnb['final_loss'])}" if bnb else "not run",
        below(0.05, "TOST p-value").judge(tost_p),
        judged_at_quick=False,
    ))  # fmt: skip
    for state, claim, quick in (
        ("fp8-lm", "FP8-LM's FP8 m (E4M3, a scale per tensor) with fp16 v", False),
        ("mxfp8", "MXFP8 (E4M3) m and v", True),
    ):  # the quick variant runs fp32, bnb8 and mxfp8 states only
        r = cell(state)
        out.append(finding(
            f"{claim} is p-equivalent to fp32 states at {head} parameters ({where})",
            text(r), at_most(C, _RATIO).judge(ratio(r)), judged_at_quick=quick,
        ))  # fmt: skip
    four = [cell(s) for s in ("ao4", "mxfp4") if s in config.states]
    out.append(finding(
        f"4-bit states (ao4, MXFP4) are not p-equivalent to fp32 states at {head} parameters "
        f"({where})",
        "; ".join(text(r) for r in four),
        above(C, _RATIO, each="4-bit format").judge([ratio(r) for r in four]),
        judged_at_quick=False,
    ))  # fmt: skip
    if "fp32" in config.params:
        # A format that keeps every tensor of this problem in float32 (bnb8-lib's min_size
        # on least squares' 256 weights) stores no low-bit state here: its run is the
        # reference's, so it says nothing about quantization error and is set aside.
        ref32 = cell("fp32", params="fp32")
        full = ref32["bytes_per_param"] if ref32 else math.inf
        runs = [cell(s, params="fp32") for s in config.states if s != "fp32"]
        low = [r for r in runs if r is None or r["bytes_per_param"] < full]
        kept = [r for r in runs if r is not None and r["bytes_per_param"] >= full]
        at_fp32 = where.replace(f"{head} parameters", "fp32 parameters")
        claim = (f"no low-bit state is p-equivalent at fp32 parameters ({at_fp32}): their "
                 "quantization error is far above fp32's noise floor")  # fmt: skip
        measured = "; ".join(text(r) for r in low)
        if kept:
            aside = ", ".join(f"{r['states']} ({r['bytes_per_param']:g} bytes per parameter)"
                              for r in kept)  # fmt: skip
            measured += (f"; set aside, no low-bit state on this problem (every tensor kept in "
                         f"float32): {aside}")  # fmt: skip
        out.append(finding(claim, measured,
                           above(C, _RATIO, each="state format").judge([ratio(r) for r in low]),
                           judged_at_quick=False))  # fmt: skip
    else:
        out.append(finding("no low-bit state is p-equivalent at fp32 parameters",
                           "fp32 parameters not run", None, judged_at_quick=False))  # fmt: skip
    if len(config.optimizers) > 1:
        other = config.optimizers[1]
        pairs = [(cell(s), cell(s, optimizer=other)) for s in config.states if s != "fp32"]
        same = [a["outcome"] == b["outcome"] for a, b in pairs if a and b]
        out.append(finding(
            f"{other} gets the same verdict as {adam} for every state format ({where})",
            "; ".join(f"{a['states']}: {a['outcome']} / {b['outcome']}" for a, b in pairs
                      if a and b),
            all(same) if same else None, judged_at_quick=False,
        ))  # fmt: skip
    else:
        out.append(finding("AdamW gets the same verdict as Adam for every state format",
                           "AdamW not run", None, judged_at_quick=False))  # fmt: skip
    got = {s: state_bytes(config, s) for s in ("fp32", "bnb8", "ao4")}
    out.append(finding(
        "memory per parameter of the state: fp32 Adam 8 bytes, 8-bit Adam about 2, 4-bit "
        "about 1 (issue 20)",
        ", ".join(f"{s} {v:.4g} B" for s, v in got.items()),
        all_of(within(8, 8, "fp32 bytes").judge(got["fp32"]),
               within(2, 2.1, "bnb8 bytes").judge(got["bnb8"]),
               within(1, 1.1, "ao4 bytes").judge(got["ao4"])),
    ))  # fmt: skip
    # bnb8-lib's claim was fixed after the full run of 2026-12-03 saw every-tensor bnb8 blow
    # up on the MLP, before any run with min_size (bitsandbytes' min_8bit_size=4096).
    for state, what in (("bnb8", "8-bit blockwise Adam"),
                        ("bnb8-lib", "8-bit Adam as bitsandbytes ships it (tensors under 4096 "
                                     "elements in fp32)")):  # fmt: skip
        mlp = cell(state, problem_="fashion-mnist mlp", optimizer=config.mlp_optimizer)
        if mlp is not None:
            measured, verdict = text(mlp), at_most(C, _RATIO).judge(ratio(mlp))
        else:
            measured = skipped or f"{state} on the MLP not run (mlp=false or not in states)"
            verdict = None
        out.append(finding(
            f"{what} is p-equivalent to fp32 Adam at {head} parameters on the Fashion-MNIST "
            f"MLP ({config.mlp_optimizer})",
            measured, verdict, judged_at_quick=False,
        ))  # fmt: skip
    return out
