"""``optimorph run``: the named recipes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from optimorph.cli.args import output_dir


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    ex = sub.add_parser(
        "run", help="run a named recipe (without a name: list them)", description=_recipes_help
    )
    ex.add_argument("experiment", nargs="?", metavar="RECIPE", help="a recipe name")
    ex.add_argument("--quick", action="store_true", help="the same pipeline, small enough for CI "
                    "(--scale quick)")  # fmt: skip
    ex.add_argument("--scale", choices=("quick", "medium", "full"), default=None,
                    help="quick (CI, a first look), medium (real signal in about 12 minutes; "
                    "recipes that have one) or full (the source's settings; the default)")
    ex.add_argument("--out", type=output_dir, default=None,
                    help="default runs/<recipe>[-quick|-medium]")  # fmt: skip
    ex.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    ex.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    ex.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change one setting of the recipe (repeatable), e.g. --set steps=100000",
    )
    ex.add_argument("--quiet", action="store_true", help="no progress lines")
    ex.set_defaults(run=run_command)


def _recipes_help() -> str:
    """``optimorph run --help``'s description: every registered recipe with its summary."""
    from optimorph.experiments.recipes import RECIPES

    import textwrap

    lines = [textwrap.fill(f"{r.name:<20} {r.summary}", 90, initial_indent="  ",
                           subsequent_indent=" " * 23) for r in RECIPES.values()]  # fmt: skip
    return "Run a named recipe. Recipes:\n" + "\n".join(lines)


def run_command(args) -> int:
    from optimorph.experiments.recipes import RECIPES, run_recipe

    if args.experiment is None:
        for recipe in RECIPES.values():
            print(f"{recipe.name:<16} {recipe.summary}  [{recipe.source}]")
        return 0
    import ast

    from optimorph.experiments.findings import FAILED, status_of
    from optimorph.results.store import read_json

    RECIPES.lookup(args.experiment)  # an unknown name fails here, naming the recipes
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write NAME=VALUE, e.g. --set steps=1000")
        try:
            overrides[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"--set {item!r}: {value!r} is not a number, string or list") from None
    if "scale" in overrides:
        raise ValueError("--set scale=...: the scale is an option, --scale quick|medium|full")
    scale = "quick" if args.quick and args.scale is None else args.scale
    suffix = f"-{scale}" if scale in ("quick", "medium") else ""
    out = args.out or Path("runs") / (args.experiment + suffix)
    run_recipe(
        args.experiment,
        out,
        quick=args.quick,
        scale=args.scale,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **overrides,
    )
    from optimorph.report.recipe_report import write_recipe_report  # after the run, as train does

    started = time.perf_counter()
    report = write_recipe_report(out)
    drawn = time.perf_counter() - started
    for f in read_json(out, "findings"):
        mark = status_of(f)
        print(f"[{'DID NOT HOLD' if mark == FAILED else mark}] {f['claim']}: {f['measured']}")
    print(f"report: {report} (figures and page drawn in {drawn:.1f} s)", file=sys.stderr)
    return 0
