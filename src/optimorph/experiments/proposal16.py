"""The Proposal-16 suite: is the optimizer zoo one algorithm in disguise, precision by precision?

Five experiments of the proposal (seeds/000: "numerical equivalence of optimizers"), run with one
fixed recipe (statistics fixed before running, STYLE.md item 11):

1. trajectory distance of every pair against the rounding noise floor (divergence figure);
2. final performance over seeds (paired t-test and TOST, margin stated in the recipe);
3. transformation verification: registered exact maps (momentum forms, Adam without moments as
   sign descent) give rounding-level simulation defects;
4. non-equivalence of signSGD with the first-order methods, beside the proposal's bound;
5. precision sensitivity: equivalence classes at fp16, fp32 and fp64.

The report states plainly which of the proposal's expected results held and which did not.
Fashion-MNIST is used for the MLP when it is installed, scikit-learn's digits otherwise; the CNN
runs on digits (8x8), the small image set available offline.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from optimorph.atomic import write_json_atomic
from optimorph.engine.parallel import map_cells
from optimorph.engine.progress import Progress
from optimorph.equivalence.compare import classes, merge_classes
from optimorph.experiments.findings import Verdict, at_least, finding, within
from optimorph.problems import DatasetNotFound, problem
from optimorph.results.equivalence_store import write_comparison

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


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything the suite runs with, fixed before any number is seen."""

    mlp_problem: str = "fashion-mnist(model=mlp, widths=[256, 256])"
    mlp_fallback: str = "digits(model=mlp, widths=[256, 256])"
    cnn_problem: str = "digits(model=cnn)"
    seeds: int = 10
    steps: int = 2000
    batch_size: int = 128
    replicas: int = 4
    C: float = 10.0
    margin: float = 0.05  # TOST margin, relative to the reference's mean final test loss
    visits: int = 20  # visited states per run for the one-step defects
    models: tuple[str, ...] = ("mlp", "cnn")  # which of the two problems to run
    workers: int | None = None  # processes for the (model, precision) jobs (None: one per core)

    @classmethod
    def quick(cls) -> "Recipe":
        """The same pipeline on the MLP alone, small enough for a first look (under 3 minutes
        on 2 cores; the time is compilation: every optimizer, precision and defect is a program
        of its own, and the CNN's programs would double it)."""
        return cls(
            mlp_problem="digits(model=mlp, widths=[32])",
            mlp_fallback="digits(model=mlp, widths=[32])",
            cnn_problem="digits(model=cnn)",
            models=("mlp",),
            seeds=3,
            steps=40,
            batch_size=32,
            replicas=2,
            visits=8,
        )


def run(out: Path, recipe: Recipe | None = None, progress: bool = True) -> dict:
    """Run the suite into ``out``: ``proposal16.json`` and, per model, the comparison's curves
    (``<label>/curves.npz``) from which the report draws its figures.

    Each (model, precision) is one job: the classes of :data:`OPTIMIZERS` with the
    :data:`VERIFY_PAIRS` judged on the same training runs (their extra optimizers trained
    alongside). Jobs are independent and run in ``recipe.workers`` processes, longest first;
    the verdicts are the same with any number."""

    recipe = recipe or Recipe()
    out = Path(out)
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
    unknown = set(recipe.models) - {"mlp", "cnn"}
    if unknown or not recipe.models:
        raise ValueError(f"proposal16: models must be some of mlp, cnn; got {recipe.models}")
    probs = {label: _mlp_problem(recipe) if label == "mlp" else problem(recipe.cnn_problem)
             for label in recipe.models}  # fmt: skip
    # By its spec: worker processes rebuild the problem from it (the problem is seeded); a
    # rerun after a crash resumes each job's training from its checkpoints.
    # Each job's training shows its own progress line, tagged "mlp fp16: ..." (jobs of hours
    # at the full settings; several processes share the terminal).
    jobs = [(probs[label].name, p, OPTIMIZERS, VERIFY_PAIRS, common,
             str(out / "checkpoints" / label), f"{label} {p}" if progress else False, label)
            for label in sorted(recipe.models, key=lambda m: m != "cnn")  # the CNN's are longest
            for p in PRECISIONS]  # fmt: skip
    _log(progress, f"{len(jobs)} jobs: classes of {len(OPTIMIZERS)} optimizers and "
         f"{len(VERIFY_PAIRS)} exact maps, per model ({', '.join(recipe.models)}) and precision "
         f"({', '.join(PRECISIONS)})")  # fmt: skip
    bar = Progress(len(jobs), "proposal16 jobs", enabled=progress, unit="jobs")
    parts = map_cells(_job, jobs, workers=recipe.workers, on_result=lambda i, _: bar.advance(1))
    doc: dict = {"recipe": dataclasses.asdict(recipe), "problems": {}}
    for label in recipe.models:
        cls = merge_classes([part for job, part in zip(jobs, parts, strict=True)
                             if job[-1] == label])  # fmt: skip
        curves_doc = {"problem": probs[label].name, "optimizers": list(OPTIMIZERS)}
        write_comparison(out / label, curves_doc, cls.comparison)
        doc["problems"][label] = {
            "problem": probs[label].name,
            "zero_gradient_share": zero_gradient_share(probs[label]),
            "classes": cls.classes,
            "non_transitive": cls.non_transitive,
            "stalled_pairs": cls.stalled_pairs,
            "undecidable": cls.undecidable,
            "pairs": {p: [v.summary() for v in vs] for p, vs in cls.comparison.pairs.items()},
            "verification": {
                f"{a} | {b}": {p: vs[k].summary() for p, vs in cls.also.pairs.items()}
                for k, (a, b) in enumerate(VERIFY_PAIRS)
            },
        }
        doc["problems"][label]["expectations"] = expectations(doc["problems"][label])
    write_json_atomic(out / "proposal16.json", doc)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    return doc


def _job(job: tuple) -> Any:
    """One (model, precision): the classes with the exact maps' pairs (in a worker process)."""
    prob, precision, optimizers, verify_pairs, common, checkpoints, progress, _ = job
    return classes(optimizers, problem=prob, precisions=[precision], also=verify_pairs,
                   checkpoint_dir=checkpoints, progress=progress, **common)  # fmt: skip


def _mlp_problem(recipe: Recipe):
    try:
        return problem(recipe.mlp_problem)
    except DatasetNotFound as err:
        print(
            f"proposal16: {err.args[0].splitlines()[0]}; using {recipe.mlp_fallback}",
            file=sys.stderr,
        )
        return problem(recipe.mlp_fallback)


def zero_gradient_share(prob, seed: int = 0) -> float:
    """The share of the full-batch gradient's coordinates that are exactly 0 at the initial
    parameters (e.g. the first-layer weights of an input that is 0 in every training example:
    their gradient is 0 in every minibatch, at every step)."""
    import jax
    import numpy as np

    grads = jax.grad(prob.loss)(prob.init(jax.random.PRNGKey(seed)), prob.train)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    return sum(int(np.sum(g == 0)) for g in leaves) / max(sum(g.size for g in leaves), 1)


def expectations(result: dict) -> list[dict]:
    """The proposal's expected results as findings (:func:`optimorph.experiments.findings.finding`):
    ``claim``, ``measured``, ``held``, ``status``, ``rule``. The class counts need the full
    recipe (40 steps of 3 seeds say little about where trajectories part), so its quick variant
    leaves them unjudged; the other rows are about the first steps and are judged at any size."""
    cl = result["classes"]
    n = {p: len(cl[p]) for p in cl}
    open_pairs = {p: len(result.get("undecidable", {}).get(p, [])) for p in cl}

    def counted(verdict: Verdict | bool, *precisions: str) -> Verdict | bool | None:
        """A class count decides a claim only when no pair it rests on was undecidable."""
        if not any(open_pairs[p] for p in precisions):
            return verdict
        return Verdict(None, verdict.rule) if isinstance(verdict, Verdict) else None

    def evidence(p: str) -> str:
        extra = f" ({open_pairs[p]} pairs undecidable: both diverged)" if open_pairs[p] else ""
        return f"{n[p]} classes{extra}"

    def count(p: str, lo: int, hi: int | None) -> dict:
        rule = at_least(lo, f"classes at {p}") if hi is None else within(lo, hi, f"classes at {p}")
        claim = f"{lo}+ classes at {p}" if hi is None else f"{lo}-{hi} classes at {p}"
        return finding(claim, evidence(p), counted(rule.judge(n[p]), p), judged_at_quick=False)

    rows = [
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
    sign = "signsgd(lr=1e-3)"
    present = all(any(sign in c for c in cl[p]) for p in cl)
    rows.append(
        finding(
            "signSGD equivalent to no first-order method, at every precision",
            "; ".join(f"{p}: {next(c for c in cl[p] if sign in c)}" for p in cl)
            if present else f"{sign} not among the optimizers",
            all([sign] in cl[p] for p in cl) if present else None,
        )
    )
    # The members by their specs as compared (the Adam row carries its eps: matching a spec
    # without it would find nothing and make the claim hold by default).
    members = sorted({o for p in cl for c in cl[p] for o in c})
    mom = next((o for o in members if o.startswith("momentum(")), None)
    adam_b2 = next((o for o in members if o.startswith("adam(") and "b2=0.001" in o), None)
    together = [p for p in cl if any(mom in c and adam_b2 in c for c in cl[p])]
    rows.append(
        finding(
            "Adam(beta2 -> 0) is not equivalent to momentum at any precision (the proposal: "
            "equivalent only when gradient magnitudes are uniform, and here they are not)",
            "in one class with momentum at: " + (", ".join(together) or "no precision")
            if mom and adam_b2 else "Adam(b2=0.001) or momentum not among the optimizers",
            not together if mom and adam_b2 else None,
        )
    )
    for pair, per_p in result["verification"].items():
        rows.append(_verified(pair, per_p, result.get("zero_gradient_share", 0.0)))
    return rows


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


__all__ = ["Recipe", "run", "expectations", "class_counts", "zero_gradient_share", "OPTIMIZERS",
           "VERIFY_PAIRS"]
