"""``optimorph report``: redraw the figures and report of any run directory."""

from __future__ import annotations

from pathlib import Path

from optimorph.cli.args import output_dir


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    rep = sub.add_parser("report", help="redraw the figures and HTML report of a run directory")
    rep.add_argument("run_dir", type=Path, help="a run directory (any command's --out)")
    rep.add_argument(
        "--out", type=output_dir, default=None,
        help="draw the figures and report.html here instead (a train run you cannot write)",
    )  # fmt: skip
    rep.set_defaults(run=report_command)


def report_command(args) -> int:
    from optimorph.results.store import drawing_dir, read_kind

    kind = read_kind(args.run_dir)
    # Before any drawing: a run directory that cannot be written, or a bad --out.
    drawn_in_place = kind in ("recipe", "compare", "classes", "phase-diagram", "sweep")
    out = drawing_dir(args.run_dir, args.out, movable=not drawn_in_place)
    if kind == "sweep":
        from optimorph.report.sweep_report import write_sweep_report

        print(write_sweep_report(args.run_dir))
        return 0
    if kind == "recipe":
        from optimorph.report.recipe_report import write_recipe_report

        print(write_recipe_report(args.run_dir))
        return 0
    if kind in ("compare", "classes", "phase-diagram"):
        from optimorph.report.equivalence_report import write_equivalence_report

        print(write_equivalence_report(args.run_dir))
        return 0
    from optimorph.report import redraw, write_report

    redraw(args.run_dir, out)
    print(write_report(args.run_dir, out_dir=out))
    return 0
