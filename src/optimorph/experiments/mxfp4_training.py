"""MXFP4 gradients and MXFP4 backward passes: which way of rounding to 4 bits still trains
like bf16?

Two places for MXFP4 in a step that is otherwise bf16 training (bf16 parameters, fp32 Adam
state, round to nearest; the reference is that run, ``bf16,state=fp32``):

* the gradient, computed as usual, then **stored** in OCP MXFP4 (E2M1 elements, an E8M0 scale
  per block of 32 along the gradient's last axis longer than 1);
* the backward pass itself (``bwd-`` variants, the policy's ``backward`` role): the operands of
  its two matrix products per layer, dy w^T and x^T dy, **quantized along their reduction
  dimension** and multiplied block by block, as Tseng et al. (2025, arXiv 2502.20586) train
  (:mod:`optimorph.precision.products`); the random Hadamard transform's signs are shared by
  both operands of a product, so the transforms cancel and only the quantization sees them.

The variants differ in one thing each (issue 20):

================  ===========================================================================
name              what is MXFP4
================  ===========================================================================
``rtn``           the stored gradient, round to nearest (ties to even)
``sr``            the stored gradient, stochastic rounding
``sr-rht``        MXFP4, stochastic rounding after a random Hadamard transform (random signs
                  per block, fresh each step; Tseng et al. 2025, arXiv 2502.20586)
``sr-hadamard``   MXFP4, stochastic rounding after a deterministic Hadamard transform
``rtn-rht``       MXFP4, round to nearest after the random Hadamard transform
``rtn-hadamard``  MXFP4, round to nearest after the deterministic Hadamard transform
``bwd-rtn``       backward products on MXFP4 operands, round to nearest
``bwd-sr``        backward products on MXFP4 operands, stochastic rounding
``bwd-sr-rht``    the same after a shared random Hadamard transform: Tseng et al.'s recipe
``bwd-sr-had``    the same after a deterministic Hadamard transform (arXiv 2605.09825)
``gemms``         every matrix product in MXFP4: the forward pass's operands (weights and
                  activations, round to nearest; ``forward`` role, straight-through gradient)
                  and the backward pass's as ``bwd-sr-rht``
================  ===========================================================================

Every variant takes ``scale=ceil`` (the smallest shared exponent with no element saturating):
with the spec's floor rule a block's largest element may be clipped to 6, which would bias
stochastic rounding; Tseng et al. avoid the clipping with a 3/4 prescale. For the stored
gradient the transforms run over each block of 32 along its last axis longer than 1
(:mod:`optimorph.precision.block`); in the ``bwd-`` variants along each product's reduction
dimension. Stochastic rounding and the random signs draw from the run's rounding key (the
step's grads key, or its backward key folded with each product's index); the noise replicas
draw the same numbers, so their spread stays the rounding noise floor.

A variant is **p-equivalent** to bf16 training by optimorph's noise-floor rule, the one
``low-bit-states`` applies (:func:`optimorph.experiments.low_bit_states.verdict_rows`): the
median over paired seeds of d(t) / max(N_ref(t), N_var(t), u ||theta_ref(t)||) stays <= C at
every evaluation after step 0 (u: bf16's unit roundoff), and the final test loss does not
differ beyond doubt and beyond the margin (:func:`optimorph.equivalence.compare.
outcome_differs`; the verdict table then says "different (final loss)"). The claims below were
fixed on d/floor alone, before that second test existed, and say so: "within C noise
floors". A variant **parts** from bf16 training at the first evaluation where that median
exceeds C. Beside it:
the paired difference of the final test loss (variant minus bf16) with its 95% CI and TOST at
a margin of 5% of the larger mean, and the step where a seed's loss blew up (the engine's
divergence rule), if one did.

Problems: the Fashion-MNIST MLP and CNN (a problem whose data is missing is skipped and its
findings left open). Findings are fixed in :func:`findings` before any run (STYLE.md item 11);
the quick variant runs a small MLP only and leaves the loss claims unjudged.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from optimorph.equivalence.compare import floor_ratio
from optimorph.experiments.cells import Cell, clear, train_cells
from optimorph.experiments.findings import above, at_most, below, finding
from optimorph.experiments.low_bit_states import verdict_rows
from optimorph.precision import precision as make_precision
from optimorph.problems import DatasetNotFound, problem
from optimorph.results import store

__all__ = ["MXFP4Config", "VARIANTS", "REFERENCE", "run", "findings", "policy"]

REFERENCE = "bf16"
_BASE = "bf16,state=fp32"
_MXFP4 = "mxfp4(scale=ceil,rounding={rounding}{transform})"


def _mxfp4(rounding: str, transform: str) -> str:
    option = f",transform={transform}" if transform else ""
    return _MXFP4.format(rounding=rounding, transform=option)


VARIANTS = {
    REFERENCE: _BASE,
    **{
        f"{short}{suffix}": f"{_BASE},grads={_mxfp4(rounding, t)}"
        for short, rounding in (("rtn", "nearest"), ("sr", "stochastic"))
        for suffix, t in (("", ""), ("-rht", "rht"), ("-hadamard", "hadamard"))
    },
    **{
        f"bwd-{name}": f"{_BASE},backward={_mxfp4(rounding, t)}"
        for name, rounding, t in (("rtn", "nearest", ""), ("sr", "stochastic", ""),
                                  ("sr-rht", "stochastic", "rht"),
                                  ("sr-had", "stochastic", "hadamard"))
    },
    "gemms": f"{_BASE},forward={_mxfp4('nearest', '')},backward={_mxfp4('stochastic', 'rht')}",
}
MODELS = ("mlp", "cnn")


@dataclasses.dataclass(frozen=True)
class MXFP4Config:
    """Every setting of the recipe, fixed before any number is seen."""

    models: tuple[str, ...] = MODELS
    mlp_problem: str = "fashion-mnist(model=mlp, widths=[256, 256], n_train=10000)"
    cnn_problem: str = "fashion-mnist(model=cnn, n_train=10000)"
    variants: tuple[str, ...] = tuple(VARIANTS)  # keys of VARIANTS; "bf16" is the reference
    optimizer: str = "adam(lr=1e-3)"
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed .. first_seed + seeds - 1 (another draw of the runs)
    steps: int = 500
    batch_size: int = 128
    evals: int = 20  # evaluations after step 0 (where d/floor is measured)
    replicas: int = 2
    C: float = 10.0
    margin: float = 0.05  # TOST margin: a fraction of the larger mean final test loss
    workers: int | None = None  # processes training the variants (None: one per core)

    def check(self) -> None:
        """Fail before any work (the recipe runner calls this before it claims the run
        directory): unknown variants or models, or no bf16 reference."""
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or REFERENCE not in self.variants:
            raise ValueError(
                f"mxfp4-training: variants must include {REFERENCE} (the reference) and be "
                f"among {', '.join(VARIANTS)}; got {list(self.variants)}"
            )
        if not self.models or set(self.models) - set(MODELS):
            raise ValueError(f"mxfp4-training: models must be some of mlp, cnn; got {self.models}")

    @classmethod
    def quick(cls) -> MXFP4Config:
        """A 784-64-10 MLP on 2000 images, the variants the judged claims need (rtn, sr-rht,
        bwd-sr-rht) and the reference, 2 seeds of 150 steps: each run is mostly compilation."""
        return cls(
            models=("mlp",),
            mlp_problem="fashion-mnist(model=mlp, widths=[64], n_train=2000)",
            variants=("bf16", "rtn", "sr-rht", "bwd-sr-rht"),
            seeds=2,
            steps=150,
            evals=10,
        )


def policy(variant: str) -> str:
    """The canonical precision spec of a variant (a key of :data:`VARIANTS`).

    >>> policy("sr-rht")
    'bf16,grads=mxfp4(rounding=stochastic,scale=ceil,transform=rht),state=fp32'
    """
    return str(make_precision(VARIANTS[variant]))


def run(config: MXFP4Config, out: Path, progress: bool = True) -> list[dict]:
    """Train every (model, variant) cell, store ``table_verdicts.json`` (one row per model
    and variant), ``table_variants.json`` (each variant's precision policy) and the curves
    ``curves_<model>.npz`` (d/floor and test loss by evaluation step), return the findings."""
    config.check()
    eval_every = max(config.steps // config.evals, 1)
    specs, skipped = {}, {}
    for label in config.models:
        spec = config.mlp_problem if label == "mlp" else config.cnn_problem
        try:
            specs[label] = problem(spec).name  # loaded here once: a missing dataset is named
        except DatasetNotFound as err:
            skipped[label] = err.args[0].splitlines()[0]
            print(f"mxfp4-training: {skipped[label]}; skipping the {label}", file=sys.stderr)
    cells = [
        Cell(f"{label}-{v}", specs[label], (config.optimizer,), policy(v),
             tuple(range(config.first_seed, config.first_seed + config.seeds)),
             config.steps, config.batch_size, eval_every, config.replicas)
        for label in specs for v in config.variants
    ]  # fmt: skip
    trained = train_cells("mxfp4-training", cells, out, workers=config.workers,
                          progress=progress)  # fmt: skip
    runs = {(label, v): trained[f"{label}-{v}"] for label in specs for v in config.variants}
    rows = []
    u = make_precision(_BASE).unit_roundoff
    for label in specs:
        ref = runs[label, REFERENCE]
        curves: dict[str, np.ndarray] = {"t": ref.result.eval_steps}
        for v in config.variants:
            row = {"problem": label, "variant": v, "policy": policy(v)}
            row.update(_verdict(ref, runs[label, v], u, config.C))
            rows.append(row)
            curves[f"ratio/{v}"] = _ratio_curve(ref, runs[label, v], u)
            curves[f"loss/{v}"] = np.nanmean(_final_metric(runs[label, v]), axis=0)
        store.write_arrays(out, f"curves_{label}", curves)
    store.write_json(out, "table_variants",
                     [{"variant": v, "precision policy": policy(v)} for v in config.variants])
    store.write_json(out, "table_verdicts", [_shown(r) for r in rows])
    clear(out)
    return findings(config, rows, skipped)


def _shown(row: dict) -> dict:
    """A verdict row as the report's table shows it (and ``table_verdicts.json`` stores it):
    "n/a" where nothing was measured (a broken run), "never" for a step that did not come."""

    def num(x: float | None) -> float | str:
        return "n/a" if x is None else x

    def step(x: int | None) -> int | str:
        return "never" if x is None else x

    return {
        "model": row["problem"],
        "variant": row["variant"],
        "verdict": row["outcome"],
        "d/floor": num(row["d_floor"]),
        "parts at step": step(row["parts_at"]),
        "final test loss": num(row["final_loss"]),
        "gap to bf16": num(row["final_diff"]),
        "gap CI low": num(row["diff_ci_low"]),
        "gap CI high": num(row["diff_ci_high"]),
        "TOST p": "n/a" if row["variant"] == REFERENCE else num(row["tost_p"]),  # itself
        "blew up at step": step(row["diverged_at"]),
    }


def _ratio(ref: Any, var: Any, u: float) -> np.ndarray:
    """d / floor per seed and evaluation, [S, E] (0 where d = 0), as ``verdict_rows`` forms it."""
    return floor_ratio(ref, 0, var, 0, u).ratio


def _ratio_curve(ref: Any, var: Any, u: float) -> np.ndarray:
    """The median over seeds of d / floor at each evaluation (inf where a run broke)."""
    ratio = _ratio(ref, var, u)
    return np.median(np.where(np.isnan(ratio), np.inf, ratio), axis=0)


def _final_metric(runs: Any) -> np.ndarray:
    evals = runs.result.evals
    return evals["test/loss" if "test/loss" in evals else "train/loss"][0]  # [S, E]


def _verdict(ref: Any, var: Any, u: float, C: float) -> dict:
    """The low-bit-states verdict (d/floor, outcome, paired final loss, TOST) plus where the
    variant parts from bf16 training and where a seed blew up."""
    row = verdict_rows(ref, var, 0, u, C)
    row.pop("bytes_per_param")  # the state is fp32 in every variant: not what varies here
    curve = _ratio_curve(ref, var, u)[1:]
    steps = ref.result.eval_steps[1:]
    parts = np.nonzero(curve > C)[0]
    row["parts_at"] = int(steps[parts[0]]) if parts.size else None
    broke = var.result.diverged_at[0]
    row["diverged_at"] = int(broke[broke >= 0].min()) if (broke >= 0).any() else None
    return row


def _cell(rows: list[dict], label: str, variant: str) -> dict | None:
    return next((r for r in rows if (r["problem"], r["variant"]) == (label, variant)), None)


def findings(config: MXFP4Config, rows: list[dict], skipped: dict | None = None) -> list[dict]:
    """The recipe's claims per model, each with its rule fixed here before running (STYLE.md
    item 11). ``skipped``: model -> why it was not run (a missing dataset)."""
    C, margin = config.C, config.margin
    out = []
    for label in MODELS:
        if label not in config.models:
            continue
        where = f"[{label}] "

        def get(variant: str) -> dict | None:
            return _cell(rows, label, variant)

        def ratio(r: dict | None) -> float:
            if r is None:
                return math.nan
            return math.inf if r["d_floor"] is None else r["d_floor"]

        def gap(r: dict | None) -> float:
            return math.nan if r is None or r["final_diff"] is None else r["final_diff"]

        def text(r: dict | None, name: str) -> str:
            if r is None:
                return skipped.get(label, f"{name} not run") if skipped else f"{name} not run"
            df = "inf (a run broke)" if r["d_floor"] is None else f"{r['d_floor']:.3g}"
            parts = f", parts at step {r['parts_at']}" if r["parts_at"] is not None else ""
            return (f"{name}: d/floor {df} ({r['outcome']}{parts}); final test loss gap "
                    f"{_g(r['final_diff'])} (95% CI {_g(r['diff_ci_low'])}.."
                    f"{_g(r['diff_ci_high'])})")  # fmt: skip

        # The same claims for the stored gradient and for the backward products (bwd-).
        families = (
            ("", "sr-hadamard", "MXFP4 gradients", True, ""),
            ("bwd-", "bwd-sr-had", "MXFP4 backward products", False,
             " (Tseng et al.'s recipe, the transform's signs shared by both operands)"),
        )  # fmt: skip
        for prefix, had_name, what, rtn_at_quick, recipe in families:
            names = {k: f"{prefix}{k}" for k in ("rtn", "sr", "sr-rht")}
            rtn, sr, rht = (get(n) for n in names.values())
            had = get(had_name)
            n_rtn, n_sr, n_rht = names.values()
            out.append(finding(
                f"{where}round-to-nearest {what} part from bf16 training by more than C noise "
                "floors",
                text(rtn, n_rtn), above(C, f"d/floor of {n_rtn}").judge(ratio(rtn)),
                judged_at_quick=rtn_at_quick,
            ))  # fmt: skip
            out.append(finding(
                f"{where}{what} with stochastic rounding after a random Hadamard transform"
                f"{recipe} stay within C noise floors of bf16 training",
                text(rht, n_rht), at_most(C, f"d/floor of {n_rht}").judge(ratio(rht)),
            ))  # fmt: skip
            tost = rht["tost_p"] if rht and rht["tost_p"] is not None else math.nan
            out.append(finding(
                f"{where}{what} with stochastic rounding after a random Hadamard transform are "
                f"near-lossless: final test loss equal to bf16 training's within {margin:.0%} "
                "(paired TOST; Tseng et al. 2025)",
                text(rht, n_rht), below(0.05, f"TOST p-value of {n_rht}").judge(tost),
                judged_at_quick=False,
            ))  # fmt: skip
            # The bias of rounding to nearest (for the backward products fixed after the
            # first full run, which saw it: judged on the seeds first_seed.. of a rerun).
            out.append(finding(
                f"{where}round-to-nearest {what} cost final test loss (rounding bias)",
                text(rtn, n_rtn),
                above(0, f"lower end of the 95% CI of {n_rtn}'s final test loss gap").judge(
                    math.nan if rtn is None or rtn["diff_ci_low"] is None
                    else rtn["diff_ci_low"]
                ),
                judged_at_quick=False,
            ))  # fmt: skip
            out.append(finding(
                f"{where}the random Hadamard transform helps stochastic rounding of {what}: "
                f"{n_rht} ends closer to bf16 training's final test loss than {n_sr}",
                f"{text(sr, n_sr)}; {text(rht, n_rht)}",
                above(0, f"|gap of {n_sr}| - |gap of {n_rht}|").judge(
                    abs(gap(sr)) - abs(gap(rht))
                ),
                judged_at_quick=False,
            ))  # fmt: skip
            out.append(finding(
                f"{where}for {what} a deterministic Hadamard transform does at least as well as "
                f"the random one (arXiv 2605.09825): {had_name} ends no farther from bf16 "
                f"training's final test loss than {n_rht}",
                f"{text(had, had_name)}; {text(rht, n_rht)}",
                at_most(0, f"|gap of {had_name}| - |gap of {n_rht}|").judge(
                    abs(gap(had)) - abs(gap(rht))
                ),
                judged_at_quick=False,
            ))  # fmt: skip
        gemms = get("gemms")
        out.append(finding(
            f"{where}MXFP4 in every matrix product (forward operands rounded to nearest, "
            "backward ones stochastically after a shared random Hadamard transform) stays "
            "within C noise floors of bf16 training",
            text(gemms, "gemms"), at_most(C, "d/floor of gemms").judge(ratio(gemms)),
            judged_at_quick=False,
        ))  # fmt: skip
    return out


def _g(x: float | None) -> str:
    return "n/a (a seed broke)" if x is None else f"{x:.3g}"
