"""``optimorph demo``: what optimorph is for, in a few minutes, with one index page.

The demo is a list of independent jobs (the zoo on noisy two moons with its Hessian, the
equivalence classes at each precision, each tour recipe's quick variant). They run on every core,
longest first, one worker process per core (:func:`optimorph.engine.parallel.map_cells`): XLA on
these small models uses about one core per process and most of a job's time is compilation, which
is single-threaded. Each job writes its own directory; this process merges the equivalence
classes and writes the index.
"""

from __future__ import annotations

import html
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optimorph.engine.parallel import map_cells

__all__ = ["OPTIMIZERS", "PROBLEM", "CLASSES", "RECIPES", "run", "run_recipes", "index_page"]

OPTIMIZERS = [
    "sgd(lr=power_law(0.15, tau=5e4, alpha=1))",
    "momentum(lr=0.05, beta=0.9, form='pytorch')",
    "nesterov(lr=0.05, beta=0.9)",
    "rmsprop(lr=1e-3)",
    "adam(lr=1e-3)",
    "adagrad(lr=0.05)",
    "signum(lr=1e-3)",
    "lion(lr=3e-4)",
]
# validation=0.1: the zoo is ranked by held-out loss, never by the training loss it overfits.
PROBLEM = "two-moons(n=500, noise=0.1, flip=0.1, validation=0.1)"

CLASSES = [
    "sgd(lr=0.01)",
    "momentum(lr=0.01, beta=0.0)",
    "momentum(lr=0.001, beta=0.9)",
    "momentum(lr=0.001, beta=0.9, form='ema')",
    "signsgd(lr=0.01)",
    "adam(lr=0.01, b1=0, b2=0, eps=0)",
]
CLASSES_PROBLEM = "least-squares(n=64, d=8, hetero=10)"
CLASSES_PRECISIONS = ("fp16", "fp32", "fp64")
CLASSES_RUN = {"seeds": 2, "steps": 100, "batch_size": 16}

RECIPES = ("batch-size", "stretched-moons", "optimizer-tour", "linear-weights")

# Seconds each job took on the 2-core reference machine in one process: the order to start them
# in (longest first keeps the two workers' finishing times close).
_COST = {"zoo": 75, "batch-size": 110, "classes": 45, "optimizer-tour": 25,
         "linear-weights": 15, "stretched-moons": 12}  # fmt: skip

Page = tuple[str, Path, str]  # (title, report path, one-line summary)


def run(out: Path, *, steps: int, seeds: int, zoo_only: bool = False,
        workers: int | None = None) -> tuple[Path, str]:  # fmt: skip
    """Run the demo into ``out`` (replaced). Returns the index page and the zoo's final table."""
    if out.exists():
        shutil.rmtree(out)  # the demo always starts fresh
    out.mkdir(parents=True)
    started = time.time()
    jobs = [("zoo", None)]
    if not zoo_only:
        jobs += [("classes", p) for p in CLASSES_PRECISIONS] + [("recipe", r) for r in RECIPES]
    jobs.sort(key=lambda job: -_COST.get(job[1] if job[0] == "recipe" else job[0], 10))
    cells = [(kind, what, out, steps, seeds, started) for kind, what in jobs]
    results: dict = {}
    classes_page: list[Page] = []

    def finished(i: int, result: Any) -> None:
        kind, what = jobs[i]
        results[jobs[i]] = result
        _say(started, f"finished {kind}{'' if what is None else ' ' + what}")
        parts = [results.get(("classes", p)) for p in CLASSES_PRECISIONS]
        if kind == "classes" and all(parts):
            # Written here while the workers run the remaining jobs (its figures take seconds).
            classes_page.append(_write_classes(out / "equivalence", parts))

    map_cells(_job, cells, workers=workers, on_result=finished)
    zoo_page, table = results[("zoo", None)]
    pages: list[Page] = [zoo_page, *classes_page]
    skipped: list[tuple[str, str]] = []
    for name in () if zoo_only else RECIPES:
        page, why = results[("recipe", name)]
        if page is not None:
            pages.append(page)
        else:
            skipped.append((f"Recipe {name} (quick)", why))
    seconds = time.time() - started
    _say(started, f"done in {seconds:.0f} s")
    return index_page(out, pages, seconds, skipped), table


def _say(started: float, text: str) -> None:
    print(f"[demo {time.time() - started:5.0f}s] {text}", file=sys.stderr, flush=True)


def _job(cell) -> Any:
    """One demo job, in a worker process (or here, with one worker)."""
    kind, what, out, steps, seeds, started = cell
    if kind == "zoo":
        _say(started, f"{len(OPTIMIZERS)} optimizers x {seeds} seeds on {PROBLEM}, then the "
             "Hessian at each one's final parameters")  # fmt: skip
        return _zoo(out / "zoo", steps, seeds)
    if kind == "classes":
        from optimorph.equivalence.compare import classes

        _say(started, f"equivalence classes at {what} ({CLASSES_PROBLEM})")
        return classes(CLASSES, problem=CLASSES_PROBLEM, precisions=[what], progress=False,
                       **CLASSES_RUN)  # fmt: skip
    pages, skipped = run_recipes(out, [what], lambda text: _say(started, text), workers=1)
    return (pages[0], None) if pages else (None, skipped[0][1])


def _zoo(out: Path, steps: int, seeds: int) -> tuple[Page, str]:
    """The zoo run with its figures, Hessian and report; the page and the final-metrics table."""
    from optimorph.engine import train
    from optimorph.report import write_report
    from optimorph.report.figures import save_figures, save_hessian_figure
    from optimorph.results import write_run
    from optimorph.results.hessian import hessian_of_run
    from optimorph.results.summary import final_table

    result = train(
        PROBLEM, OPTIMIZERS, seeds=seeds, steps=steps, batch_size=32, precision="fp32",
        eval_every=max(steps // 40, 1), checkpoint_dir=out / "checkpoints", progress=False,
    )  # fmt: skip
    write_run(result, out)
    save_figures(result, out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    hessian_of_run(out, examples=500, k=3, lanczos_steps=40, samples=50, seeds=1, progress=False)
    save_hessian_figure(out)
    report = write_report(out, title="optimorph demo: the zoo")
    table = final_table(result)
    for line in result.divergence_messages():
        table += f"\n{line}"
    page = ("The zoo on noisy two moons", report,
            f"{len(OPTIMIZERS)} optimizers, {seeds} seeds, the Hessian at the end")  # fmt: skip
    return page, table


def _write_classes(eq: Path, parts: list) -> Page:
    """Merge the per-precision classes, store them and write the equivalence report."""
    from optimorph.equivalence.compare import merge_classes
    from optimorph.report.equivalence_report import write_equivalence_report
    from optimorph.results import store
    from optimorph.results.equivalence_store import write_comparison

    cls = merge_classes(parts)
    with store.claim(eq, "classes") as d:
        doc = {
            "problem": cls.comparison.problem,
            "optimizers": CLASSES,
            "precisions": dict(cls.classes),
            "non_transitive": cls.non_transitive,
            "stalled_pairs": cls.stalled_pairs,
            "pairs": {p: [v.summary() for v in vs] for p, vs in cls.comparison.pairs.items()},
        }
        store.write_config(d, "classes", {"optimizers": CLASSES, "demo": True})
        write_comparison(d, doc, cls.comparison)
    counts = ", ".join(f"{len(c)} classes at {p}" for p, c in cls.classes.items())
    return "Which optimizers are the same algorithm?", write_equivalence_report(eq), counts


def run_recipes(out: Path, names, say: Callable[[str], None],
                workers: int | None = None) -> tuple[list[Page], list[tuple[str, str]]]:  # fmt: skip
    """Run the quick variant of each recipe in ``names`` into ``out/NAME``: the index entries
    ``(title, report, summary)`` of those that ran and ``(title, why)`` of those skipped for a
    missing dataset (the whole message: where it looked and how to get the data). ``workers``
    is passed to the recipes that run cells in processes."""
    import dataclasses

    from optimorph.experiments.findings import tally
    from optimorph.experiments.recipes import RECIPES as REGISTRY
    from optimorph.experiments.recipes import run_recipe
    from optimorph.problems import DatasetNotFound
    from optimorph.report.recipe_report import write_recipe_report
    from optimorph.results import store

    pages, skipped = [], []
    for name in names:
        say(f"recipe {name} (quick)")
        title = f"Recipe {name} (quick)"
        fields = {f.name for f in dataclasses.fields(REGISTRY.lookup(name).config)}
        extra = {"workers": workers} if "workers" in fields and workers is not None else {}
        try:
            d = run_recipe(name, out / name, quick=True, progress=False, **extra)
        except DatasetNotFound as err:
            say(f"skipped {name}: {err}")
            skipped.append((title, str(err)))
            continue
        findings = store.read_json(d, "findings")
        pages.append((title, write_recipe_report(d), tally(findings)))
    return pages, skipped


def index_page(out: Path, pages: list[Page], seconds: float,
               skipped: list[tuple[str, str]] = ()) -> Path:  # fmt: skip
    """``out/index.html``: one line per report, summary first, and what was skipped and why."""
    from optimorph.report.html import write_page

    items = "".join(
        f"<li><a href='{html.escape(str(path.relative_to(out)))}'>{html.escape(title)}</a>"
        f" &mdash; {html.escape(summary)}</li>"
        for title, path, summary in pages
    )
    body = [
        "<h1>optimorph demo</h1>",
        "<p class='lead'>A laboratory for training optimizers: is this optimizer an old one in "
        "disguise, at which precision do two optimizers become the same, and do the tour's "
        "claims hold? Each page below answers one question, summary first.</p>",
        f"<ul>{items}</ul>",
    ]
    if skipped:
        body += [
            "<h2>Skipped</h2>",
            "<ul>" + "".join(f"<li>{html.escape(title)}: not run<pre>{html.escape(why)}</pre></li>"
                             for title, why in skipped) + "</ul>",
        ]  # fmt: skip
    body.append(
        f"<p>Made in {seconds:.0f} s. Full-size recipes: <code>optimorph run NAME</code>.</p>"
    )
    return write_page(out / "index.html", "optimorph demo", body)

