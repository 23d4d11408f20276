"""``optimorph demo``: the zoo, the equivalence classes and the tour's quick recipes, one index
page."""

from __future__ import annotations

import sys
from pathlib import Path

from optimorph.cli.args import POSITIVE, output_dir


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    demo = sub.add_parser("demo", help="train the zoo on noisy two moons and write a report")
    demo.add_argument("--out", type=output_dir, default=Path("runs/demo"),
                      help="directory for the demo's runs and index.html (replaced)")
    demo.add_argument("--steps", type=POSITIVE, default=4000, help="training steps of the zoo run")
    demo.add_argument("--seeds", type=POSITIVE, default=3, help="seeds per optimizer (zoo run)")
    demo.add_argument("--zoo-only", action="store_true", help="only the zoo run (fast)")
    demo.add_argument("--workers", type=POSITIVE, default=None,
                      help="processes for the demo's jobs (default: one per core)")
    demo.set_defaults(run=demo_command)


def demo_command(args) -> int:
    """What optimorph is for, in a few minutes: the zoo on noisy two moons, the tour's quick
    recipes, the headline equivalence table, and one index page linking every report."""
    from optimorph import demo

    index, table = demo.run(args.out, steps=args.steps, seeds=args.seeds, zoo_only=args.zoo_only,
                            workers=args.workers)  # fmt: skip
    print(table)
    print(f"report: {index}", file=sys.stderr)
    return 0
