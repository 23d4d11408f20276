"""``optimorph sweep``, ``query`` and ``export``: grids into a results store, SQL over it,
its curves out to TensorBoard."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from optimorph.cli.args import POSITIVE, number, output_dir


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    sw = sub.add_parser(
        "sweep",
        help="run every cell of a TOML sweep file into a results store (rerun to resume)",
        description="Run every cell (problem x precision x optimizer point x seed) of a sweep\n"
        "file that is not yet done in --out. The same command after an interrupt or a kill\n"
        "continues: finished cells are kept, partial ones restart from their last checkpoint.\n"
        "File format: docs/sweeps.md; example: examples/sweep.toml.",
    )
    sw.add_argument("file", type=Path, help="the sweep file (TOML)")
    sw.add_argument("--out", type=output_dir, required=True, help="the results store")
    sw.add_argument("--workers", type=POSITIVE, default=1,
                    help="local processes running batches (e.g. 2 on two cores)")
    sw.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run on a Dask distributed cluster, e.g. tcp://127.0.0.1:8786 (its "
                    "workers must see --out at the same path; pip install 'optimorph[cluster]')")
    sw.add_argument("--checkpoint-every", type=number(0.0), default=30.0, metavar="SECONDS",
                    help="seconds between checkpoints of a running batch")
    sw.add_argument("--overwrite", action="store_true",
                    help="replace a store that holds another sweep")
    sw.add_argument("--check", action="store_true",
                    help="check the file and print its cells and programs; run nothing")
    sw.add_argument("--quiet", action="store_true", help="no progress line")
    sw.set_defaults(run=sweep_command)

    q = sub.add_parser(
        "query",
        help="SQL over a sweep store's cells and metrics (DuckDB)",
        description="Run one SQL statement over a sweep store. Tables: cells (one row per\n"
        "cell: problem, precision, optimizer, family, seed, status, each hyperparameter,\n"
        "diverged_at and each final number, e.g. validation_loss) and metrics (every\n"
        "finished cell's curves: cell, optimizer, seed, step, split, metric, value).\n"
        "Example: optimorph query runs/sweep \"select family, precision, min(validation_loss)\n"
        "from cells group by all order by all\"",
    )
    q.add_argument("store", type=Path, help="a sweep store (optimorph sweep's --out)")
    q.add_argument("sql", help="one SQL statement (quote it)")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table: aligned columns; csv; json: one object per row (default: table)")
    q.add_argument("--limit", type=POSITIVE, default=50,
                   help="rows printed as a table (csv and json print all; default: 50)")
    q.set_defaults(run=query_command)

    ex = sub.add_parser(
        "export",
        help="write a sweep store's curves in another tool's format (TensorBoard)",
        description="Write every finished cell of a sweep store as a TensorBoard run\n"
        "(<problem>/<precision>/<point>/seed-<k>, every metric as a scalar series). Rerun to\n"
        "export cells finished since; runs already written are kept.\n"
        "Needs tensorboardX: pip install 'optimorph[tensorboard]'.",
    )
    ex.add_argument("store", type=Path, help="a sweep store (optimorph sweep's --out)")
    ex.add_argument("--tensorboard", action="store_true", help="write TensorBoard event files")
    ex.add_argument("--logdir", type=Path, default=None,
                    help="where the runs go (default: STORE/tensorboard)")
    ex.set_defaults(run=export_command)


def sweep_command(args) -> int:
    from optimorph.sweeps import load, run_sweep
    from optimorph.sweeps.run import print_warnings

    if args.scheduler is not None and args.workers > 1:
        raise ValueError("give --workers or --scheduler, not both (a cluster has its own workers)")
    sweep = load(args.file)
    n = len(sweep.batches)
    print(f"sweep {sweep.name}: {len(sweep.cells)} cells in {n} batch{'es' if n != 1 else ''} "
          "(a batch's cells are the lanes of one compiled program)", file=sys.stderr)  # fmt: skip
    if args.check:
        for b in sweep.batches:
            print(f"{b.problem} | {b.precision} | {len(b.optimizers)} optimizer points x "
                  f"{len(b.seeds)} seeds | {', '.join(b.optimizers[:3])}"
                  f"{', ...' if len(b.optimizers) > 3 else ''}")  # fmt: skip
        return 0
    try:
        report = run_sweep(sweep, args.out, workers=args.workers, scheduler=args.scheduler,
                           checkpoint_every=args.checkpoint_every, overwrite=args.overwrite,
                           progress=not args.quiet)  # fmt: skip
    except KeyboardInterrupt:
        print("optimorph: interrupted; finished cells are kept: rerun the same command to "
              "continue", file=sys.stderr)  # fmt: skip
        return 130
    print_warnings(report)
    print(report.line(), file=sys.stderr)
    from optimorph.report.sweep_report import write_sweep_report  # after the run, as train does

    print(f"report: {write_sweep_report(args.out)}", file=sys.stderr)
    if report.failed:
        first = next(iter(report.failed.values()))
        print(f"optimorph: error: {len(report.failed)} of {report.cells} cells failed (first: "
              f"{first}); rerun the same command to retry them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def export_command(args) -> int:
    from optimorph.results.tensorboard import export_tensorboard

    if not args.tensorboard:
        print("optimorph export: give a format: --tensorboard", file=sys.stderr)
        return 2
    logdir = args.logdir or args.store / "tensorboard"
    written, kept = export_tensorboard(args.store, logdir)
    print(f"{written} runs written, {kept} already there, in {logdir}; view them with: "
          f"tensorboard --logdir {logdir}")
    return 0


def query_command(args) -> int:
    from optimorph.results.sweep_results import query

    table = query(args.store, args.sql)
    rows, names = table.to_pylist(), table.column_names
    if args.format == "json":
        import json

        for row in rows:
            print(json.dumps(row, default=str))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows([row[n] for n in names] for row in rows)
    else:
        _print_rows(rows, names, limit=args.limit)
    return 0


def _print_rows(rows: list[dict], names: list[str], limit: int) -> None:
    """Rows as aligned columns (numbers right-aligned, to 4 significant digits when measured),
    the first ``limit`` of them, and how many were left out."""
    from optimorph.report.html import format_number

    def text(x: Any) -> str:
        if x is None:
            return ""
        number = isinstance(x, (int, float)) and not isinstance(x, bool)
        return format_number(x) if number else str(x)

    shown = [[text(r[n]) for n in names] for r in rows[:limit]]
    numeric = [all(isinstance(r[n], (int, float)) or r[n] is None for r in rows) for n in names]
    widths = [max([len(n)] + [len(row[k]) for row in shown]) for k, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w)
                  for c, w, num in zip(cells, widths, numeric, strict=True)]  # fmt: skip
        return "  ".join(padded).rstrip()

    print(line(list(names)))
    for row in shown:
        print(line(row))
    if len(rows) > limit:
        print(f"({len(rows) - limit} more rows; --limit N shows more, --format csv all)")
    elif not rows:
        print("(no rows)")
