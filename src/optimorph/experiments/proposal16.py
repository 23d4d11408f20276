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
import shutil
import sys
from pathlib import Path

from optimorph.atomic import write_json_atomic
from optimorph.equivalence.compare import classes, compare
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

    @classmethod
    def quick(cls) -> "Recipe":
        """The same pipeline, small enough for CI (minutes on 2 cores)."""
        return cls(
            mlp_problem="digits(model=mlp, widths=[32])",
            mlp_fallback="digits(model=mlp, widths=[32])",
            cnn_problem="digits(model=cnn)",
            seeds=3,
            steps=40,
            batch_size=32,
            replicas=2,
            visits=8,
        )


def run(out: Path, recipe: Recipe | None = None, progress: bool = True) -> dict:
    """Run the suite into ``out``: ``proposal16.json`` and, per model, the comparison's curves
    (``<label>/curves.npz``) from which the report draws its figures."""

    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(
        seeds=recipe.seeds,
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        progress=progress,
        replicas=recipe.replicas,
        C=recipe.C,
        margin=recipe.margin,
        visits=recipe.visits,
    )
    unknown = set(recipe.models) - {"mlp", "cnn"}
    if unknown or not recipe.models:
        raise ValueError(f"proposal16: models must be some of mlp, cnn; got {recipe.models}")
    doc: dict = {"recipe": dataclasses.asdict(recipe), "problems": {}}
    for label in recipe.models:
        prob = _mlp_problem(recipe) if label == "mlp" else problem(recipe.cnn_problem)
        _log(progress, f"[{label}] classes of {len(OPTIMIZERS)} optimizers on {prob.name}")
        ckpt = out / "checkpoints" / label  # a rerun after a crash resumes the training
        cls = classes(
            OPTIMIZERS, problem=prob, precisions=PRECISIONS, checkpoint_dir=ckpt, **common
        )
        verify = {}
        for a, b in VERIFY_PAIRS:
            _log(progress, f"[{label}] verify {a} ~ {b}")
            verify[f"{a} | {b}"] = compare(
                a, b, problem=prob, precision=PRECISIONS, checkpoint_dir=ckpt, **common
            )
        curves_doc = {"problem": prob.name, "optimizers": list(OPTIMIZERS)}
        write_comparison(out / label, curves_doc, cls.comparison)
        doc["problems"][label] = {
            "problem": prob.name,
            "classes": cls.classes,
            "non_transitive": cls.non_transitive,
            "stalled_pairs": cls.stalled_pairs,
            "undecidable": cls.undecidable,
            "pairs": {p: [v.summary() for v in vs] for p, vs in cls.comparison.pairs.items()},
            "verification": {
                k: {p: v[0].summary() for p, v in c.pairs.items()} for k, c in verify.items()
            },
        }
        doc["problems"][label]["expectations"] = expectations(doc["problems"][label])
    write_json_atomic(out / "proposal16.json", doc)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    return doc


def _mlp_problem(recipe: Recipe):
    try:
        return problem(recipe.mlp_problem)
    except DatasetNotFound as err:
        print(
            f"proposal16: {err.args[0].splitlines()[0]}; using {recipe.mlp_fallback}",
            file=sys.stderr,
        )
        return problem(recipe.mlp_fallback)


def expectations(result: dict) -> list[dict]:
    """The proposal's expected results, each with ``held`` (True/False) and the evidence."""
    cl = result["classes"]
    n = {p: len(cl[p]) for p in cl}
    open_pairs = {p: len(result.get("undecidable", {}).get(p, [])) for p in cl}

    def counted(held: bool, *precisions: str) -> bool | None:
        """A class count decides a claim only when no pair it rests on was undecidable."""
        return None if any(open_pairs[p] for p in precisions) else held

    def evidence(p: str) -> str:
        extra = f" ({open_pairs[p]} pairs undecidable: both diverged)" if open_pairs[p] else ""
        return f"{n[p]} classes{extra}"

    rows = [
        _row("2-3 classes at fp16", counted(2 <= n["fp16"] <= 3, "fp16"), evidence("fp16")),
        _row("3-4 classes at fp32", counted(3 <= n["fp32"] <= 4, "fp32"), evidence("fp32")),
        _row("5+ classes at fp64", counted(n["fp64"] >= 5, "fp64"), evidence("fp64")),
        _row(
            "fewer classes at lower precision (collapse: fp16 < fp32 < fp64, strictly "
            "somewhere)",
            counted(n["fp16"] <= n["fp32"] <= n["fp64"] and n["fp16"] < n["fp64"], *cl),
            ", ".join(evidence(p).replace(" classes", "") + f" at {p}" for p in cl),
        ),
    ]
    sign = "signsgd(lr=1e-3)"
    alone = all([sign] in cl[p] for p in cl)
    rows.append(
        _row(
            "signSGD equivalent to no first-order method, at every precision",
            alone,
            "; ".join(f"{p}: {[c for c in cl[p] if sign in c][0]}" for p in cl),
        )
    )
    mom, adam_b2 = "momentum(lr=0.01, beta=0.9)", "adam(lr=1e-3, b1=0.9, b2=0.001)"
    together = {p: any(mom in c and adam_b2 in c for c in cl[p]) for p in cl}
    rows.append(
        _row(
            "Adam(beta2 -> 0) equivalent to momentum (gradient magnitudes not uniform "
            "here, so the proposal predicts: not equivalent)",
            not any(together.values()),
            f"together at: {together}",
        )
    )
    for pair, per_p in result["verification"].items():
        ok = all(v["equivalent"] for v in per_p.values())
        defects = ", ".join(f"{p}: {_defect_text(v)}" for p, v in per_p.items())
        rows.append(_row(f"exact map verified: {pair}", ok, f"defects {defects}"))
    return rows


def _defect_text(v: dict) -> str:
    """A defect for the table; an infinite one says why (Adam with eps = 0 divides 0 by 0 at
    every exactly-zero gradient coordinate, where sign descent gives 0)."""
    d = v["defect_ab"]
    if isinstance(d, float) and math.isfinite(d):
        return f"{d:.2g}"
    why = "0/0 at exactly-zero gradient coordinates (eps = 0)" if "eps=0" in v["a"] else "NaN/inf"
    return f"{d} ({why})"


def _row(claim: str, held: bool | None, evidence: str) -> dict:
    return {"claim": claim, "held": None if held is None else bool(held), "evidence": evidence}


def _log(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr)


def class_counts(doc: dict) -> dict:
    """{problem: {precision: number of classes}} for notes and tests."""
    return {k: {p: len(c) for p, c in v["classes"].items()} for k, v in doc["problems"].items()}


__all__ = ["Recipe", "run", "expectations", "class_counts", "OPTIMIZERS", "VERIFY_PAIRS"]
