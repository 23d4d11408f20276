"""``optimorph hessian``: the Hessian spectrum at a run's final parameters."""

from __future__ import annotations

import sys
from pathlib import Path

from optimorph.cli.args import POSITIVE


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    hs = sub.add_parser(
        "hessian",
        help="the Hessian spectrum at a train run's final parameters (writes hessian.json)",
    )
    hs.add_argument("run_dir", type=Path, help="a train run directory (its --out)")
    hs.add_argument(
        "--examples", type=POSITIVE, default=2048,
        help="the first N training examples (the probes' evaluation subset)",
    )  # fmt: skip
    hs.add_argument("--k", type=POSITIVE, default=5, help="largest and most negative eigenvalues")
    hs.add_argument("--lanczos-steps", type=POSITIVE, default=50,
                    help="Lanczos iterations (full reorthogonalization)")
    hs.add_argument("--samples", type=POSITIVE, default=100, help="Hutchinson vectors (trace)")
    hs.add_argument("--seeds", type=POSITIVE, default=1, help="the run's first N seeds")
    hs.add_argument("--quiet", action="store_true", help="no progress line")
    hs.set_defaults(run=hessian_command)


def hessian_command(args) -> int:
    from optimorph.report import write_report
    from optimorph.report.figures import save_hessian_figure
    from optimorph.results.hessian import hessian_of_run
    from optimorph.results.store import read_kind

    if read_kind(args.run_dir) != "train":
        raise ValueError(f"{args.run_dir} is not a train run directory (optimorph train --out)")
    doc = hessian_of_run(args.run_dir, examples=args.examples, k=args.k,
                         lanczos_steps=args.lanczos_steps, samples=args.samples,
                         seeds=args.seeds, progress=not args.quiet)  # fmt: skip
    for e in doc["entries"]:
        if e.get("diverged"):
            print(f"{e['optimizer']} seed {e['seed']}: diverged, no spectrum", file=sys.stderr)
            continue
        print(f"{e['optimizer']} seed {e['seed']}: top {e['top'][0]:.6g}, most negative "
              f"{e['bottom'][0]:.6g}, trace {e['trace']:.6g} ± {e['trace_se']:.2g}")  # fmt: skip
    save_hessian_figure(args.run_dir)  # the other figures are as they were
    print(f"wrote {args.run_dir / 'hessian.json'}; report: {write_report(args.run_dir)}",
          file=sys.stderr)  # fmt: skip
    return 0
