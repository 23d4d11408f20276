"""The Proposal-16 suite: is the optimizer zoo one algorithm in disguise, precision by precision?

Five experiments of the proposal (seeds/000: "numerical equivalence of optimizers"), run with one
fixed recipe (statistics fixed before running, STYLE.md item 11):

1. trajectory distance of every pair against the rounding noise floor (divergence figure);
2. final performance over seeds (paired t-test and TOST, margin stated in the recipe);
3. transformation verification: registered exact maps (momentum forms, Adam without moments as
   sign descent) give rounding-level simulation defects;
4. non-equivalence of signSGD with the first-order methods, and its distance's growth law;
5. precision sensitivity: equivalence classes at fp16, fp32 and fp64.

Each of the proposal's five expected results (its section 4.3) is a finding with its rule fixed in
:func:`expectations`. Three scales: ``full`` is the proposal's own settings (20 epochs, 10 seeds,
an MLP under 500K and a CNN under 2M parameters), ``medium`` real signal in about 12 minutes on
2 cores, ``quick`` a first look (under 3 minutes); every field is printed in the report beside
the proposal's value (:data:`PROPOSAL`). Both models train on Fashion-MNIST, the offline 28x28
set closest to the proposal's MNIST and CIFAR-10; without it the recipe stops before any work
(it never substitutes another data set).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from optimorph.atomic import write_json_atomic
from optimorph.engine.parallel import default_workers, map_cells
from optimorph.engine.progress import Progress
from optimorph.equivalence.classes import count_text
from optimorph.equivalence.compare import classes, merge_classes
from optimorph.experiments.findings import (
    Verdict,
    above,
    all_of,
    at_least,
    below,
    finding,
    within,
)
from optimorph.problems import DatasetNotFound, problem
from optimorph.results.equivalence_store import write_comparison
from optimorph.timing import Phases

# eps = 1e-4 for the adaptive methods at every precision (stated in the report): the usual 1e-8
# rounds to 0 in fp16, every zero gradient coordinate then gives 0/0, and the fp16 column would
# ask nothing of the algorithms (all NaN by step 2).
OPTIMIZERS = [
    "sgd(lr=0.1)",
    "momentum(lr=0.01, beta=0.9)",
    "adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-4)",
    "adam(lr=1e-3, b1=0.9, b2=0.001, eps=1e-4)",
    "rmsprop(lr=1e-3, beta=0.99, eps=1e-4)",
    "signsgd(lr=1e-3)",
    "adagrad(lr=0.01, eps=1e-4)",
]
VERIFY_PAIRS = [
    ("momentum(lr=0.01, beta=0.9)", "momentum(lr=0.01, beta=0.9, form='ema')"),
    ("momentum(lr=0.01, beta=0.9)", "momentum(lr=0.01, beta=0.9, form='heavy_ball')"),
    ("adam(lr=1e-3, b1=0, b2=0, eps=0)", "signsgd(lr=1e-3)"),
]
PRECISIONS = ["fp16", "fp32", "fp64"]


# What the proposal states (seeds/000, sections 3 and 4), printed beside each setting of the
# recipe in the report: a scale that departs from it says so by name.
PROPOSAL = {
    "dataset": "MNIST (MLP) and CIFAR-10 (CNN)",
    "mlp_widths": "an MLP of < 500K parameters",
    "cnn_channels": "a CNN of < 2M parameters",
    "n_train": "the whole training set",
    "n_test": "the whole test set",
    "epochs": "20-50",
    "seeds": "10",
    "batch_size": "not stated",
    "replicas": "not stated (optimorph's noise floor)",
    "models": "mlp, cnn",
    "precisions": "fp16, fp32, fp64",
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything the suite runs with, fixed before any number is seen. The defaults are the
    ``full`` scale, the proposal's own settings (Fashion-MNIST for both models: the offline
    28x28 set closest to its MNIST and CIFAR-10); :meth:`quick` and :meth:`medium` name what
    they scale down, and the report prints every field beside :data:`PROPOSAL`."""

    scale: str = "full"
    dataset: str = "fashion-mnist"  # or "mnist"; IDX files, never a silent substitute
    path: str | None = None  # a directory with the IDX files (default: where the loader looks)
    mlp_widths: tuple[int, ...] = (256, 256)  # 784-256-256-10: 269,322 parameters
    cnn_channels: tuple[int, ...] = (16, 32)  # two strided 3x3 convs and a dense: 20,490
    n_train: int = 60000  # the first n_train training images
    n_test: int = 10000  # the first n_test test images (evaluated at every evaluation)
    epochs: float = 20.0
    batch_size: int = 128
    seeds: int = 10
    replicas: int = 4
    C: float = 10.0
    margin: float = 0.05  # TOST margin, relative to the reference's mean final test loss
    visits: int = 20  # visited states per run for the one-step defects
    models: tuple[str, ...] = ("mlp", "cnn")  # which of the two problems to run
    workers: int | None = None  # processes for the (model, precision) jobs (None: one per core)

    @classmethod
    def quick(cls) -> "Recipe":
        """The same pipeline on a small MLP and 40 steps, for CI and a first look (minutes)."""
        return cls(scale="quick", mlp_widths=(32,), n_train=1280, n_test=2000, epochs=1.0,
                   batch_size=32, seeds=3, replicas=2, visits=8, models=("mlp",))  # fmt: skip

    @classmethod
    def medium(cls) -> "Recipe":
        """Both models, 3 epochs of a 5,120-image subset (120 steps), 5 seeds with one noise
        replica each, a narrower MLP and CNN, 2,000 test images: real signal in 6 to 12
        minutes on 2 cores (measured with nothing compiled yet: 713 s on one machine, 385 s
        on a faster AVX-512 one; half of the training phase is XLA compiling, the rest mostly
        the CNN, whose im2col convolutions run at a few GFLOP/s on a CPU)."""
        return cls(scale="medium", mlp_widths=(128,), cnn_channels=(8, 16), n_train=5120,
                   n_test=2000, epochs=3.0, seeds=5, replicas=1, visits=10)  # fmt: skip

    def check(self) -> None:
        """Fail before any work (the recipe runner calls this before it claims the run
        directory): unknown models, or the data set missing (one line on how to get it)."""
        self.problems()

    def problems(self) -> dict:
        """``{model: Problem}`` of :attr:`models`, checked (see :meth:`check`)."""
        unknown = set(self.models) - {"mlp", "cnn"}
        if unknown or not self.models:
            raise ValueError(f"proposal16: models must be some of mlp, cnn; got {self.models}")
        return {model: _problem(self, model) for model in self.models}

    @property
    def steps(self) -> int:
        """Training steps: ``epochs`` passes over ``n_train`` images in batches."""
        return max(1, round(self.epochs * self.n_train / self.batch_size))

    def problem_spec(self, model: str) -> str:
        """The problem spec of ``model`` (``mlp`` or ``cnn``) at these settings."""
        path = f", path={self.path!r}" if self.path else ""
        shape = (f"widths={list(self.mlp_widths)}" if model == "mlp"
                 else f"channels={list(self.cnn_channels)}")  # fmt: skip
        return (f"{self.dataset}(model={model}, {shape}, n_train={self.n_train}, "
                f"n_test={self.n_test}{path})")  # fmt: skip

    def settings_table(self) -> list[list[str]]:
        """Rows ``[setting, this run, the proposal]`` for the report."""
        rows = []
        for name, stated in PROPOSAL.items():
            value = ", ".join(PRECISIONS) if name == "precisions" else getattr(self, name)
            if isinstance(value, tuple):
                value = ", ".join(str(v) for v in value)
            rows.append([name, str(value), stated])
        rows.append(["steps", f"{self.steps} (epochs x n_train / batch_size)", "-"])
        return rows


def run(out: Path, recipe: Recipe | None = None, progress: bool = True) -> dict:
    """Run the suite into ``out``: ``proposal16.json`` and, per model, the comparison's curves
    (``<label>/curves.npz``) from which the report draws its figures.

    Each (model, precision) is one job: the classes of :data:`OPTIMIZERS` with the
    :data:`VERIFY_PAIRS` judged on the same training runs (their extra optimizers trained
    alongside). Jobs are independent and run in ``recipe.workers`` processes, longest first;
    the verdicts are the same with any number. ``proposal16.json["timing"]`` says where the
    time went (training, defects, intrinsic errors, theory checks; compilation inside each)."""

    recipe = recipe or Recipe()
    out = Path(out)
    started = time.perf_counter()
    probs = recipe.problems()  # a missing data set stops here, before any work
    out.mkdir(parents=True, exist_ok=True)
    common = dict(
        seeds=recipe.seeds,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        replicas=recipe.replicas,
        C=recipe.C,
        margin=recipe.margin,
        visits=recipe.visits,
    )
    # By its spec: worker processes rebuild the problem from it (the problem is seeded); a
    # rerun after a crash resumes each job's training from its checkpoints.
    # Each job's training shows its own progress line, tagged "mlp fp16: ..." (jobs of hours
    # at the full settings; several processes share the terminal).
    jobs = [(probs[label].name, p, OPTIMIZERS, VERIFY_PAIRS, common,
             str(out / "checkpoints" / label), f"{label} {p}" if progress else False, label)
            for label in sorted(recipe.models, key=lambda m: m != "cnn")  # the CNN's are longest
            for p in PRECISIONS]  # fmt: skip
    _log(progress, f"proposal16 ({recipe.scale} scale): {len(jobs)} jobs: classes of "
         f"{len(OPTIMIZERS)} optimizers and {len(VERIFY_PAIRS)} exact maps, per model "
         f"({', '.join(recipe.models)}) and precision ({', '.join(PRECISIONS)}); "
         f"{recipe.steps} steps of batch {recipe.batch_size}, {recipe.seeds} seeds, "
         f"{recipe.replicas} noise replicas")  # fmt: skip
    bar = Progress(len(jobs), "proposal16 jobs", enabled=progress, unit="jobs")
    parts = map_cells(_job, jobs, workers=recipe.workers, on_result=lambda i, _: bar.advance(1))
    doc: dict = {"recipe": {**dataclasses.asdict(recipe), "steps": recipe.steps},
                 "settings": recipe.settings_table(), "problems": {}}  # fmt: skip
    phases, per_job = Phases(), {}
    for label in recipe.models:
        cls = merge_classes([part for job, part in zip(jobs, parts, strict=True)
                             if job[-1] == label])  # fmt: skip
        for p, timing in cls.comparison.timing.items():
            phases.add(timing)
            per_job[f"{label} {p}"] = timing
        curves_doc = {"problem": probs[label].name, "optimizers": list(OPTIMIZERS)}
        write_comparison(out / label, curves_doc, cls.comparison)
        doc["problems"][label] = {
            "problem": probs[label].name,
            "parameters": parameter_count(probs[label]),
            "zero_gradient_share": zero_gradient_share(probs[label]),
            "classes": cls.classes,
            "non_transitive": cls.non_transitive,
            "stalled_pairs": cls.stalled_pairs,
            "undecidable": cls.undecidable,
            "class_range": cls.class_range,
            "pairs": {p: [v.summary() for v in vs] for p, vs in cls.comparison.pairs.items()},
            "distances": {p: {f"{v.a} | {v.b}": distance_growth(v) for v in vs}
                          for p, vs in cls.comparison.pairs.items()},  # fmt: skip
            "verification": {
                f"{a} | {b}": {p: vs[k].summary() for p, vs in cls.also.pairs.items()}
                for k, (a, b) in enumerate(VERIFY_PAIRS)
            },
        }
        doc["problems"][label]["expectations"] = expectations(doc["problems"][label], recipe.C)
    wall = time.perf_counter() - started
    doc["timing"] = {"wall_s": wall, "phases": phases.as_dict(), "jobs": per_job,
                     "workers": recipe.workers or default_workers()}  # fmt: skip
    _log(progress, f"proposal16: {wall:.0f} s wall; summed over the jobs: {phases.summary()}; "
         f"noise replicas are {recipe.replicas} of each run's {recipe.replicas + 1} lanes")
    write_json_atomic(out / "proposal16.json", doc)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    return doc


def _job(job: tuple) -> Any:
    """One (model, precision): the classes with the exact maps' pairs (in a worker process)."""
    prob, precision, optimizers, verify_pairs, common, checkpoints, progress, _ = job
    return classes(optimizers, problem=prob, precisions=[precision], also=verify_pairs,
                   checkpoint_dir=checkpoints, progress=progress, **common)  # fmt: skip


def _problem(recipe: Recipe, model: str):
    """The model's problem; a missing data set stops the recipe here, before any work, with
    one line on how to get it (never another data set in its place)."""
    try:
        return problem(recipe.problem_spec(model))
    except DatasetNotFound:
        how = ("`apt-get install dataset-fashion-mnist`" if recipe.dataset == "fashion-mnist"
               else "the four MNIST IDX files in a directory")  # fmt: skip
        raise DatasetNotFound(
            f"proposal16 needs {recipe.dataset} and found no IDX files: install it with {how}, "
            "or pass --set path=DIR (a directory with the four IDX files)"
        ) from None


def parameter_count(prob) -> int:
    """The number of trainable parameters of a problem's model (shapes only)."""
    from optimorph.problems.models import n_params

    return n_params(prob.init)


def distance_growth(v) -> dict:
    """A pair's trajectory distance as the proposal's expected results ask for it: the largest
    seed-median d(t) = ||theta_A(t) - theta_B(t)|| over the evaluations, and d's growth
    exponent k (d ~ t^k, log-log least squares over t > 0) fitted per seed."""
    import numpy as np

    from optimorph import stats

    d = np.asarray(v.distance, dtype=float)[:, 1:]
    t = np.asarray(v.eval_steps, dtype=float)[1:]
    with np.errstate(all="ignore"):
        med = np.median(d, axis=0) if d.size else np.array([np.nan])
    exps = [stats.growth_exponent(t, row)[0] for row in d]
    return {
        "d_max": float(np.nanmax(med)) if np.isfinite(med).any() else float("nan"),
        "d_final": float(med[-1]),
        "exponents": [float(k) for k in exps],
    }


def zero_gradient_share(prob, seed: int = 0) -> float:
    """The share of the full-batch gradient's coordinates that are exactly 0 at the initial
    parameters (e.g. the first-layer weights of an input that is 0 in every training example:
    their gradient is 0 in every minibatch, at every step)."""
    import jax
    import numpy as np

    grads = jax.grad(prob.loss)(prob.init(jax.random.PRNGKey(seed)), prob.train)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    return sum(int(np.sum(g == 0)) for g in leaves) / max(sum(g.size for g in leaves), 1)


def expectations(result: dict, C: float = 10.0) -> list[dict]:
    """The proposal's expected results (its section 4.3, numbered as there) and the recipe's
    own checks, as findings (:func:`optimorph.experiments.findings.finding`): ``claim``,
    ``measured``, ``held``, ``status``, ``rule``. Every rule is fixed here, before any run.

    Claims about where trajectories part after many steps (2, 3, 4, 5 and the collapse) are not
    judged at the quick scale (40 steps of 3 seeds); the others are about the first steps and
    are judged at any scale. ``C`` is the noise-floor constant the pairs were judged with."""
    cl = result["classes"]
    n = {p: len(cl[p]) for p in cl}
    open_pairs = {p: len(result.get("undecidable", {}).get(p, [])) for p in cl}
    members = sorted({o for p in cl for c in cl[p] for o in c})
    # The members by their specs as compared (the Adam rows carry their eps: matching a spec
    # without it would find nothing and make a claim hold by default).
    mom = next((o for o in members if o.startswith("momentum(") and "form=" not in o), None)
    adam = next((o for o in members if o.startswith("adam(") and "b2=0.999" in o), None)
    adam_b2 = next((o for o in members if o.startswith("adam(") and "b2=0.001" in o), None)
    sign = next((o for o in members if o.startswith("signsgd(")), None)

    def counted(verdict: Verdict | bool, *precisions: str) -> Verdict | bool | None:
        """A class count decides a claim only when no pair it rests on was undecidable."""
        if not any(open_pairs[p] for p in precisions):
            return verdict
        return Verdict(None, verdict.rule) if isinstance(verdict, Verdict) else None

    def evidence(p: str) -> str:
        extra = f" ({open_pairs[p]} pairs undecidable: both diverged)" if open_pairs[p] else ""
        return count_text(n[p], result.get("class_range", {}).get(p)) + extra

    def count(p: str, lo: int, hi: int | None) -> dict:
        rule = at_least(lo, f"classes at {p}") if hi is None else within(lo, hi, f"classes at {p}")
        claim = f"(5) {lo}+ classes at {p}" if hi is None else f"(5) {lo}-{hi} classes at {p}"
        return finding(claim, evidence(p), counted(rule.judge(n[p]), p), judged_at_quick=False)

    rows = [
        _distance_claim(result, mom, adam_b2),
        _growth_claim(result, sign, mom),
        _adam_momentum_fp32(result, adam, mom, C),
        _adam_momentum_fp16(result, adam, mom, C),
        count("fp16", 2, 3),
        count("fp32", 3, 4),
        count("fp64", 5, None),
        finding(
            "fewer classes at lower precision (collapse: fp16 < fp32 < fp64, strictly "
            "somewhere)",
            ", ".join(evidence(p).replace(" classes", "") + f" at {p}" for p in cl),
            counted(n["fp16"] <= n["fp32"] <= n["fp64"] and n["fp16"] < n["fp64"], *cl),
            judged_at_quick=False,
        ),
    ]
    present = sign is not None and all(any(sign in c for c in cl[p]) for p in cl)
    rows.append(
        finding(
            "signSGD equivalent to no first-order method, at every precision (class D)",
            "; ".join(f"{p}: {next(c for c in cl[p] if sign in c)}" for p in cl)
            if present else "signsgd not among the optimizers",
            all([sign] in cl[p] for p in cl) if present else None,
        )
    )
    for pair, per_p in result["verification"].items():
        rows.append(_verified(pair, per_p, result.get("zero_gradient_share", 0.0)))
    return rows


def _pair(result: dict, p: str, a: str | None, b: str | None) -> tuple[dict, dict] | None:
    """The verdict summary and the distances of the pair {a, b} at precision p (either order)."""
    if a is None or b is None or p not in result.get("pairs", {}):
        return None
    for v in result["pairs"][p]:
        if {v["a"], v["b"]} == {a, b}:
            return v, result.get("distances", {}).get(p, {}).get(f"{v['a']} | {v['b']}", {})
    return None


def _distance_claim(result: dict, mom: str | None, adam_b2: str | None) -> dict:
    """(1): momentum and Adam(b2 -> 0) have trajectory distance < 1e-5 at fp32."""
    claim = ("(1) SGD+momentum and Adam (b2 -> 0) have trajectory distance < 1e-5 at fp32, "
             "confirming equivalence")  # fmt: skip
    got = _pair(result, "fp32", mom, adam_b2)
    if got is None or "d_max" not in got[1]:
        return finding(claim, "the pair was not run at fp32", None)
    v, dist = got
    measured = (f"max over t of the seed-median ||theta_A(t) - theta_B(t)|| = "
                f"{dist['d_max']:.3g} (final {dist['d_final']:.3g}); pair {v['outcome']}, "
                f"d/floor {v['distance_ratio']:.3g}")  # fmt: skip
    return finding(claim, measured, below(1e-5, "max_t median distance").judge(dist["d_max"]))


def _growth_claim(result: dict, sign: str | None, mom: str | None) -> dict:
    """(2): signSGD's distance from momentum grows as O(sqrt t): the mean over seeds of the
    per-seed growth exponent, with its 95% t-interval, must contain 0.5 and be narrower than
    0.5 (wider: the seeds cannot tell sqrt(t) from t or a constant, open); an interval that
    excludes 0.5 did not hold."""
    import numpy as np
    from scipy import stats as sps

    claim = ("(2) signSGD's trajectory distance from SGD+momentum grows as O(sqrt t) at fp32 "
             "(exponent 1/2)")  # fmt: skip
    got = _pair(result, "fp32", sign, mom)
    exps = np.asarray(got[1].get("exponents", []) if got else [], dtype=float)
    exps = exps[np.isfinite(exps)]
    if exps.size < 2:
        return finding(claim, "fewer than 2 seeds with a fitted exponent", None,
                       judged_at_quick=False)  # fmt: skip
    mean = float(exps.mean())
    half = float(sps.t.ppf(0.975, exps.size - 1) * exps.std(ddof=1) / np.sqrt(exps.size))
    lo, hi = mean - half, mean + half
    contains = lo <= 0.5 <= hi
    held = (True if hi - lo <= 0.5 else None) if contains else False
    rule = ("95% interval of the mean exponent contains 0.5 and is narrower than 0.5 (an "
            "interval excluding 0.5: did not hold)")  # fmt: skip
    measured = (f"growth exponent {mean:.3f}, 95% interval [{lo:.3f}, {hi:.3f}] over "
                f"{exps.size} seeds (d ~ t^k fitted per seed on the evaluations t > 0); "
                f"max seed-median distance {got[1]['d_max']:.3g}")  # fmt: skip
    return finding(claim, measured, Verdict(held, rule), judged_at_quick=False)


def _adam_momentum_fp32(result: dict, adam: str | None, mom: str | None, C: float) -> dict:
    """(3): standard Adam is distinguishable from momentum (d/floor > C at fp32) but the
    difference is small (their final test losses equivalent by TOST at the recipe's margin)."""
    claim = ("(3) standard Adam (b2 = 0.999) is distinguishable from momentum at fp32, but the "
             "difference is small (final test loss equivalent within the margin)")  # fmt: skip
    got = _pair(result, "fp32", adam, mom)
    if got is None:
        return finding(claim, "the pair was not run at fp32", None, judged_at_quick=False)
    v = got[0]
    margin = v.get("tost_margin")
    tost = v.get("tost_p_value")
    verdict = all_of(
        above(C, "d/floor at fp32").judge(v["distance_ratio"]),
        below(0.05, "TOST p (final test loss within the margin)").judge(
            float("nan") if tost is None else tost),
    )  # fmt: skip
    measured = (f"d/floor {v['distance_ratio']:.3g} ({v['outcome']}); final {v['final_metric']} "
                f"difference {v['final_diff']:.3g}, TOST p {_p(tost)} at margin "
                f"{_p(margin)}")  # fmt: skip
    return finding(claim, measured, verdict, judged_at_quick=False)


def _adam_momentum_fp16(result: dict, adam: str | None, mom: str | None, C: float) -> dict:
    """(4): at fp16 standard Adam and momentum are one class (the pair's verdict equivalent)."""
    claim = ("(4) at fp16, even standard Adam collapses toward momentum (adaptive denominator "
             "rounded away): the pair equivalent at fp16")  # fmt: skip
    got = {p: _pair(result, p, adam, mom) for p in result.get("pairs", {})}
    if got.get("fp16") is None:
        return finding(claim, "the pair was not run at fp16", None, judged_at_quick=False)
    v = got["fp16"][0]
    ratios = ", ".join(f"{p} {g[0]['distance_ratio']:.3g}" for p, g in got.items() if g)
    held = None if not v.get("decided", True) else v["outcome"] == "equivalent"
    rule = f"the pair's verdict at fp16 is equivalent (d/floor <= C = {C:g}, kappa bounded)"
    measured = f"at fp16 {v['outcome']}: {v['reason']}; d/floor by precision: {ratios}"
    return finding(claim, measured, Verdict(held, rule), judged_at_quick=False)


def _p(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _verified(pair: str, per_p: dict, zero_share: float) -> dict:
    """A registered exact map's row. Adam with b1 = b2 = eps = 0 is sign descent only where no
    gradient coordinate is exactly 0: there it computes 0/0 = NaN where sign descent gives 0,
    and by the documented convention a NaN on one side only is a difference (defect inf, pair
    different). On a problem with exactly-zero coordinates, a pair that parted only that way
    (A NaN from step 1, B finite) is outside the map's domain: open, not a failed map."""
    defects = ", ".join(f"{p}: {_defect_text(v)}" for p, v in per_p.items())
    claim = f"exact map verified: {pair}"
    if all(v["equivalent"] for v in per_p.values()):
        return finding(claim, f"equivalent at every precision; defects {defects}", True)
    failed = [p for p, v in per_p.items() if not v["equivalent"]]
    at_zero = zero_share > 0 and all(
        _eps_zero(per_p[p]["a"]) and per_p[p].get("first_nan_a") == 1
        and per_p[p].get("first_nan_b") is None
        for p in failed
    )  # fmt: skip
    if not at_zero:
        return finding(claim, f"different at {', '.join(failed)}; defects {defects}", False)
    return finding(
        claim,
        f"not testable on this problem: {zero_share:.1%} of the gradient's coordinates are "
        "exactly 0 (at the initial parameters, full batch), where Adam with eps = 0 computes "
        "0/0 = NaN and sign descent 0; by the documented convention (NaN on one side only is a "
        f"difference) the pair is different at {', '.join(failed)}, A NaN from step 1; "
        f"defects {defects}. The map is exact where every gradient coordinate is nonzero",
        None,
    )


def _eps_zero(spec: str) -> bool:
    """Whether an optimizer spec sets eps to exactly 0."""
    return re.search(r"\beps=0(\.0*)?(e[+-]?\d+)?[,)]", spec) is not None


def _defect_text(v: dict) -> str:
    """A defect for the table; an infinite one says what was measured (a NaN or inf in one
    state only: the documented convention makes that defect inf)."""
    d = v["defect_ab"]
    if isinstance(d, float) and math.isfinite(d):
        return f"{d:.2g}"
    return f"{d} (NaN/inf in one state only)"


def _log(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr)


def class_counts(doc: dict) -> dict:
    """{problem: {precision: number of classes}} for notes and tests."""
    return {k: {p: len(c) for p, c in v["classes"].items()} for k, v in doc["problems"].items()}


__all__ = ["Recipe", "PROPOSAL", "run", "expectations", "class_counts",
           "zero_gradient_share", "parameter_count", "distance_growth", "OPTIMIZERS",
           "VERIFY_PAIRS"]
