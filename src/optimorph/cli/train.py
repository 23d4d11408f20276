"""``optimorph train``: train optimizers on a problem into a run directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from optimorph.cli.args import (
    POSITIVE,
    add_output_policy,
    add_train_options,
    claimed,
    output_dir,
)


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    tr = sub.add_parser("train", help="train optimizers on a problem and write a run directory")
    tr.add_argument("--problem", required=True, help="problem spec, e.g. 'two-moons(n=500)'")
    tr.add_argument(
        "--optimizer",
        action="append",
        required=True,
        help="optimizer spec (repeat for several), e.g. 'adam(lr=1e-3)' or 'pkg.mod:factory'",
    )
    add_train_options(tr)
    tr.add_argument(
        "--devices", type=POSITIVE, default=None, metavar="N",
        help="split the seeds and grid points over N devices (on a CPU: N host devices, one "
        "per core; about 2x on two cores); each device's lanes get the bits of a one-device "
        "run of those lanes (an uneven count is padded with a repeat of the last lane)",
    )  # fmt: skip
    tr.add_argument("--out", required=True, type=output_dir, help="run directory to write")
    add_output_policy(tr)
    tr.set_defaults(run=train_command)


def train_command(args) -> int:
    from optimorph.engine import train
    from optimorph.results import write_run

    with claimed(args, "train") as out:
        result = train(
            args.problem,
            args.optimizer,
            seeds=args.seeds,
            steps=args.steps,
            batch_size=args.batch_size,
            precision=args.precision,
            eval_every=args.eval_every,
            log_every=args.log_every,
            checkpoint_dir=out / "checkpoints",
            checkpoint_every=args.checkpoint_every,
            progress=not args.quiet,
            track_stalled=args.track_stalled,
            probes=_probes(args),
            # The metrics so far, at checkpoints at most every LIVE_EVERY_S: `optimorph report
            # DIR` shows a live run. Throttled apart from checkpoints because each write is the
            # whole run's Parquet table (NaN-padded), too much for --checkpoint-every 0.3.
            on_checkpoint=_live_writer(out, write_run),
            devices=args.devices,
        )
        write_run(result, out)
        # Imported after training: the report code (matplotlib) would delay the first step.
        from optimorph.report import write_report
        from optimorph.report.figures import save_figures

        save_figures(result, out)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing to resume
        report = write_report(out)
    _print_summary(result)
    print(f"wrote {out}; report: {report}", file=sys.stderr)
    return 0


LIVE_EVERY_S = 30.0


def _live_writer(out: Path, write_run):
    """``on_checkpoint`` for a train run: write the result so far into ``out`` when at least
    ``LIVE_EVERY_S`` seconds have passed since the start or the last such write."""
    import time

    last = [time.monotonic()]

    def write(partial) -> None:
        if time.monotonic() - last[0] >= LIVE_EVERY_S:
            write_run(partial, out)
            last[0] = time.monotonic()

    return write


def _probes(args) -> list:
    """The trajectory probes ``--probe`` names (``--probe-reference RUN_DIR`` gives x*)."""
    if not args.probe:
        return []
    from optimorph.probes.trajectory import make_probes

    reference = None
    if args.probe_reference is not None:
        import jax

        from optimorph.problems import problem
        from optimorph.results.rundir import read_final_params

        template = problem(args.problem).init(jax.random.key(0))
        try:  # optimizer 0, seed 0 of the earlier run
            stacked = read_final_params(args.probe_reference, template)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"--probe-reference: {err} (give a train run's --out)"
            ) from None
        except ValueError as err:
            raise ValueError(f"--probe-reference: {err}; is it a run of {args.problem}?") from None
        reference = jax.tree.map(lambda a: a[0], stacked)
    return make_probes(",".join(args.probe), reference=reference, every=args.probe_every,
                       full_every=args.full_batch_every)  # fmt: skip


def _print_summary(result) -> None:
    """The final metrics table (summary.json's rule), then any divergence on stderr."""
    from optimorph.results.summary import final_table

    print(final_table(result))
    for line in result.divergence_messages():
        print(line, file=sys.stderr)
