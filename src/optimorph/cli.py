"""The ``optimorph`` command: list the zoo, train, run the demo, redraw reports.

Human-readable output goes to stderr (progress) and stdout (tables); bad input ends with one line
``optimorph: error: ...`` naming the fix and exit status 2, never a traceback from inside JAX.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import warnings
from pathlib import Path

def entry() -> None:
    """The console script: :func:`main`, with an interrupt anywhere ending in exit status 130.

    After an interrupt the process ends with ``os._exit``: a normal interpreter shutdown while
    XLA's threads still hold a computation crashed (segmentation fault) about one time in three.
    Checkpoints are written atomically, so the last one is intact whenever the interrupt lands.
    Until training takes SIGINT over, a Ctrl-C ends the process at once (:mod:`optimorph.startup`:
    raised during JAX's import, a ``KeyboardInterrupt`` was dropped by a gc callback).
    """
    import os

    from optimorph import startup

    startup.install()  # before anything heavy is imported
    try:
        code = main()
    except KeyboardInterrupt:  # after training, or where start-up's handler was not installed
        print("optimorph: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `optimorph list | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        os._exit(0)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.stderr.flush()
    if code == 130:
        os._exit(130)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the ``optimorph`` command with ``argv`` (default: the process's arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        print(f"optimorph: error: {err}", file=sys.stderr)
        return 2
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    from optimorph import spec

    previous = spec.allow_imports(True) if args.allow_import else None
    try:
        from optimorph.startup import warning_printer

        with warnings.catch_warnings():  # restores the caller's warning display on return
            warnings.showwarning = warning_printer(warnings.showwarning)
            return _run(args)
    finally:
        if previous is not None:
            spec.allow_imports(previous)


def _compilation_cache(jax) -> None:
    """Keep compiled programs on disk (JAX's persistent cache): most of a small run's time is XLA
    compiling, and a rerun, a resumed run or a worker process compiling a program another already
    compiled reads it back instead. ``$OPTIMORPH_CACHE_DIR`` moves it, ``off`` turns it off;
    a cache set through JAX's own ``JAX_COMPILATION_CACHE_DIR`` is left as it is. The cache
    holds XLA's output for the same program, so no result depends on it."""
    import os

    where = os.environ.get("OPTIMORPH_CACHE_DIR", "")
    if where.lower() in ("off", "0", "no") or jax.config.jax_compilation_cache_dir:
        return
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "optimorph", "jax")
    # The environment too: worker processes (spawned) configure JAX from it when they import it.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = where
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


def _run(args) -> int:
    if not _lists(args):  # a listing computes nothing: `list recipes` imports no JAX at all
        import jax

        # The CLI owns its process, so float64 and emulated formats are available here (the
        # library never flips this flag behind a user's back).
        jax.config.update("jax_enable_x64", True)
        _compilation_cache(jax)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(
            "optimorph: interrupted; rerun the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as err:
        print(f"optimorph: error: {err}", file=sys.stderr)
        return 2


def _lists(args) -> bool:
    """Whether the command only prints registries: ``optimorph list ...`` and ``optimorph run``
    without a recipe name."""
    return args.run is _list or (args.run is _experiment and args.experiment is None)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the command's one-line form (``optimorph: error: ...``), every
    option's default in its help, and a description that may be a function, called only when the
    help is shown (the recipe list needs the recipe registry, too slow to import for every
    command)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise _UsageError(f"{message} (see '{self.prog} --help')")

    def format_help(self) -> str:
        if callable(self.description):
            self.description = self.description()
        return super().format_help()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with ``(default: X)`` after every option that has a default its text does not
    already state (None, False and [] are no default: the text says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return text + " (default: %(default)s)"


class _UsageError(Exception):
    """A command line argparse refused; :func:`main` prints it in one line and returns 2."""


# Argument types: every numeric option has a stated valid range, checked before any work starts.


def _integer(low: int, high: int | None = None):
    span = f">= {low}" if high is None else f"in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _number(low: float, *, open_low: bool = False):
    span = f"> {low:g}" if open_low else f">= {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (open_low and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _list_of(item, what: str):
    """A comma-separated list of ``item`` values, at least one."""

    def parse(text: str) -> list:
        parts = [t.strip() for t in text.split(",") if t.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"give at least one {what}, got {text!r}")
        try:
            return [item(t) for t in parts]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"each {what} {err}") from None

    parse.__name__ = "list"
    return parse


def _out_dir(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a directory, e.g. --out runs/mine")
    return Path(text)


def _precision_list(text: str) -> list[str]:
    found = _precisions(text)
    if not found:
        raise argparse.ArgumentTypeError(f"give at least one precision, got {text!r}")
    return found


POSITIVE = _integer(1)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optimorph", description=__doc__.splitlines()[0])
    p.add_argument(
        "--allow-import",
        action="store_true",
        help="allow 'pkg.module:factory(...)' specs: imports that module and calls the factory",
    )
    sub = p.add_subparsers(metavar="COMMAND", help="one of the commands below; COMMAND --help")

    ls = sub.add_parser("list", help="list registered optimizers, problems, recipes and norms")
    ls.add_argument(
        "what",
        nargs="?",
        choices=["optimizers", "problems", "recipes", "norms"],
        help="what to list (default: everything)",
    )
    ls.add_argument("--match", choices=["torch"], default=None,
                    help="optimizers: the optimorph spec p-equivalent to each torch.optim default")
    ls.set_defaults(run=_list)

    tr = sub.add_parser("train", help="train optimizers on a problem and write a run directory")
    tr.add_argument("--problem", required=True, help="problem spec, e.g. 'two-moons(n=500)'")
    tr.add_argument(
        "--optimizer",
        action="append",
        required=True,
        help="optimizer spec (repeat for several), e.g. 'adam(lr=1e-3)' or 'pkg.mod:factory'",
    )
    _common_train_args(tr)
    tr.add_argument("--out", required=True, type=_out_dir, help="run directory to write")
    _out_policy(tr)
    tr.set_defaults(run=_train)

    demo = sub.add_parser("demo", help="train the zoo on noisy two moons and write a report")
    demo.add_argument("--out", type=_out_dir, default=Path("runs/demo"),
                      help="directory for the demo's runs and index.html (replaced)")
    demo.add_argument("--steps", type=POSITIVE, default=4000, help="training steps of the zoo run")
    demo.add_argument("--seeds", type=POSITIVE, default=3, help="seeds per optimizer (zoo run)")
    demo.add_argument("--zoo-only", action="store_true", help="only the zoo run (fast)")
    demo.add_argument("--workers", type=POSITIVE, default=None,
                      help="processes for the demo's jobs (default: one per core)")
    demo.set_defaults(run=_demo)

    cmp_ = sub.add_parser("compare", help="are two optimizers p-equivalent? (noise-floor rule)")
    cmp_.add_argument("a", help="optimizer spec A")
    cmp_.add_argument("b", help="optimizer spec B")
    _equivalence_args(cmp_)
    cmp_.set_defaults(run=_compare)

    cls = sub.add_parser("classes", help="equivalence classes of several optimizers per precision")
    cls.add_argument(
        "--optimizers",
        required=True,
        help="comma-separated specs, e.g. 'sgd(lr=0.1),adam(lr=1e-3)'",
    )
    cls.add_argument("--diagnose", action="store_true",
                     help="for each pair that is different, find the first step and state slot "
                          "where they part and the likely named cause (seconds per pair; "
                          "compare always does this)")  # fmt: skip
    _equivalence_args(cls)
    cls.set_defaults(run=_classes)

    ph = sub.add_parser("phase-diagram", help="equivalence over mantissa bits x heterogeneity")
    ph.add_argument("--pairs", nargs="+", required=True,
                    help="optimizer pairs, each 'A|B', e.g. 'sgd(lr=0.1)|momentum(lr=0.1, beta=0)'")
    ph.add_argument(
        "--problem-family",
        default="quadratic",
        choices=["quadratic"],
        help="diagonal quadratic whose condition number is the heterogeneity knob",
    )
    ph.add_argument(
        "--mantissa-bits",
        type=_list_of(_integer(1, 52), "mantissa width"),
        default=None,
        help="comma-separated, each in 1..52 (default: 4,5,7,8,10,12,16,20,23,30,40,52)",
    )
    ph.add_argument(
        "--heterogeneity",
        type=_list_of(_number(1.0), "heterogeneity"),
        default=None,
        help="comma-separated, each >= 1 (max|g_i| / min|g_i|) (default: 8 values log-spaced "
        "from 1 to 1e4)",
    )
    ph.add_argument("--steps", type=POSITIVE, default=200, help="training steps per cell")
    ph.add_argument("--seeds", type=POSITIVE, default=3, help="seeds per cell")
    ph.add_argument("--out", type=_out_dir, required=True, help="run directory to write")
    _out_policy(ph)
    ph.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ph.set_defaults(run=_phase)

    wn = sub.add_parser(
        "which-norm",
        help="which norm an optimizer's first step is steepest descent under",
    )
    wn.add_argument("optimizer", help='an optimizer spec, e.g. "adam(b1=0, b2=0, eps=0)"')
    wn.add_argument("--problem", default=None, help="add real gradients of this problem")
    wn.add_argument("--samples", type=POSITIVE, default=8, help="random gradients per shape")
    wn.add_argument("--layout", default="in_out", choices=("in_out", "out_in"),
                    help="how the optimizer stores weights: (d_in, d_out) or (d_out, d_in)")
    wn.add_argument("--json", action="store_true", help="JSON on stdout")
    wn.set_defaults(run=_which_norm)

    nm = sub.add_parser("norms", help="the modular norm's norm per layer of a problem's model")
    nm.add_argument("problem", help="a problem spec, e.g. 'modular-addition(p=97)'")
    nm.add_argument("--optimizer", default="modular", help="a modular(...) spec: its norm rules")
    nm.set_defaults(run=_norms)

    ex = sub.add_parser(
        "run", help="run a named recipe (without a name: list them)", description=_recipes_help
    )
    ex.add_argument("experiment", nargs="?", metavar="RECIPE", help="a recipe name")
    ex.add_argument("--quick", action="store_true", help="the same pipeline, small enough for CI")
    ex.add_argument("--out", type=_out_dir, default=None, help="default runs/<recipe>[-quick]")
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
    ex.set_defaults(run=_experiment)

    sw = sub.add_parser(
        "sweep",
        help="run every cell of a TOML sweep file into a results store (rerun to resume)",
        description="Run every cell (problem x precision x optimizer point x seed) of a sweep\n"
        "file that is not yet done in --out. The same command after an interrupt or a kill\n"
        "continues: finished cells are kept, partial ones restart from their last checkpoint.\n"
        "File format: docs/sweeps.md; example: examples/sweep.toml.",
    )
    sw.add_argument("file", type=Path, help="the sweep file (TOML)")
    sw.add_argument("--out", type=_out_dir, required=True, help="the results store")
    sw.add_argument("--workers", type=POSITIVE, default=1,
                    help="local processes running batches (e.g. 2 on two cores)")
    sw.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="run on a Dask distributed cluster, e.g. tcp://127.0.0.1:8786 (its "
                    "workers must see --out at the same path; pip install 'optimorph[cluster]')")
    sw.add_argument("--checkpoint-every", type=_number(0.0), default=30.0, metavar="SECONDS",
                    help="seconds between checkpoints of a running batch")
    sw.add_argument("--overwrite", action="store_true",
                    help="replace a store that holds another sweep")
    sw.add_argument("--check", action="store_true",
                    help="check the file and print its cells and programs; run nothing")
    sw.add_argument("--quiet", action="store_true", help="no progress line")
    sw.set_defaults(run=_sweep)

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
    q.set_defaults(run=_query)

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
    hs.set_defaults(run=_hessian)

    rep = sub.add_parser("report", help="redraw the figures and HTML report of a run directory")
    rep.add_argument("run_dir", type=Path, help="a run directory (any command's --out)")
    rep.add_argument(
        "--out", type=_out_dir, default=None,
        help="draw the figures and report.html here instead (a train run you cannot write)",
    )  # fmt: skip
    rep.set_defaults(run=_report)
    return p


def _common_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=POSITIVE, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--steps", type=POSITIVE, default=1000, help="training steps")
    p.add_argument("--batch-size", type=POSITIVE, default=None,
                   help="examples per step (default: the full batch)")
    p.add_argument("--precision", default="fp32",
                   help="a precision policy, e.g. fp32, bf16, e5m10, 'bf16,v=fp32'")
    p.add_argument("--eval-every", type=POSITIVE, default=None,
                   help="evaluate on the held-out sets every N steps and at step 0 (default: "
                   "the divisor of --steps nearest steps/20)")
    p.add_argument("--log-every", type=POSITIVE, default=1,
                   help="record the training loss averaged over windows of N steps")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--track-stalled",
        action="store_true",
        help="record per step the fraction of updates rounding absorbed (metric 'stalled')",
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="NAMES",
        help="trajectory probes inside the step: gap, smooth, corr, ratio, noise, sharpness, "
        "spectrum or all (all but spectrum; comma-separated or repeated); stored as split "
        "'probe' in metrics.parquet",
    )
    p.add_argument(
        "--probe-reference",
        default=None,
        metavar="RUN_DIR",
        help="x* for the gap/ratio probes: the final parameters of an earlier train run",
    )
    p.add_argument(
        "--probe-every", type=POSITIVE, default=100, metavar="K",
        help="sharpness and spectrum every K steps",
    )
    p.add_argument(
        "--full-batch-every",
        type=POSITIVE,
        default=10,
        metavar="K",
        help="the probes' full-batch gradients (ratio, noise) every K steps",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_number(0.0),
        default=30.0,
        metavar="SECONDS",
        help="seconds between checkpoints of a long run (default 30)",
    )


def _equivalence_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problem", required=True,
                   help="problem spec, e.g. 'least-squares(n=64, d=8, hetero=10)'")
    p.add_argument(
        "--precision",
        type=_precision_list,
        default="fp16,fp32,fp64",
        help="precisions separated by commas, or by ';' when one has roles: "
        "'fp16;params=bf16,state=fp32'",
    )
    p.add_argument("--seeds", type=POSITIVE, default=5, help="paired seeds per optimizer")
    p.add_argument("--steps", type=POSITIVE, default=500, help="training steps")
    # Not yet the default: a Ctrl-C reaches the workers too, and resuming an interrupted
    # comparison is tested for one process only.
    p.add_argument("--workers", type=POSITIVE, default=1,
                   help="processes judging the precisions (e.g. 2 on two cores; default 1)")
    p.add_argument("--batch-size", type=POSITIVE, default=None,
                   help="examples per step (default: the full batch)")
    p.add_argument(
        "--C", type=_number(0.0, open_low=True), default=10.0, help="noise-floor constant (> 0)"
    )
    p.add_argument(
        "--out", type=_out_dir, default=None,
        help="also write figures, JSON and report.html here (default: print only)",
    )
    _out_policy(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _out_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")


def _split_specs(text: str) -> list[str]:
    """Split 'a(x=1, y=2),b' on top-level commas only."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [x for x in [*out, cur.strip()] if x]


def _precisions(text: str) -> list[str]:
    """'fp16,fp32' or, when a precision has roles (which contain commas), 'fp16;bf16,v=fp32'."""
    return [p.strip() for p in text.split(";" if ";" in text else ",") if p.strip()]


def _run_args(args) -> dict:
    """The training and verdict settings shared by compare and classes."""
    return dict(
        problem=args.problem,
        seeds=args.seeds,
        steps=args.steps,
        batch_size=args.batch_size,
        progress=not args.quiet,
        workers=args.workers,
        C=args.C,
    )


def _claimed(args, kind: str):
    """The run directory held for the command (a no-op context without --out)."""
    import contextlib

    from optimorph.results import store

    if args.out is None:
        return contextlib.nullcontext(None)
    return store.claim(args.out, kind, resume=args.resume, overwrite=args.overwrite)


def _settings(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k != "run"}  # fmt: skip


def _compare(args) -> int:
    from optimorph.equivalence.compare import compare

    with _claimed(args, "compare") as out:
        ckpt = out / "checkpoints" if out else None
        precisions = args.precision
        result = compare(
            args.a, args.b, precision=precisions, checkpoint_dir=ckpt, diagnose=True,
            **_run_args(args),
        )
        doc = {
            "problem": result.problem,
            "a": args.a,
            "b": args.b,
            "settings": result.settings,
            "precisions": {p: v[0].summary() for p, v in result.pairs.items()},
        }
        for p, (v,) in result.pairs.items():
            word = v.outcome if v.outcome == "different" else v.outcome.upper()
            tests = f" ({v.tests_note})" if v.tests_note else ""
            print(
                f"{p:>6}: {word:<11} d/floor={v.distance_ratio:<10.3g} defect={v.defect_ab:.2g}/"
                f"{v.defect_ba:.2g} kappa={v.kappa_phi:.3g}/{v.kappa_psi:.3g} map={v.map} "
                f"p={v.p_value:.3g} tost_p={v.tost_p_value:.3g}{tests}  {v.reason}",
                file=sys.stderr,
            )
        if out:
            _write_equivalence_outputs(out, "compare", doc, result, args)
    _emit(doc, args.json)
    return 0


def _classes(args) -> int:
    from optimorph.equivalence.compare import classes

    with _claimed(args, "classes") as out:
        specs = _split_specs(args.optimizers)
        ckpt = out / "checkpoints" if out else None
        result = classes(
            specs, precisions=args.precision, checkpoint_dir=ckpt, diagnose=args.diagnose,
            **_run_args(args),
        )
        doc = {
            "problem": result.comparison.problem,
            "optimizers": specs,
            "precisions": {p: c for p, c in result.classes.items()},
            "non_transitive": result.non_transitive,
            "stalled_pairs": result.stalled_pairs,
            "undecidable": result.undecidable,
            "pairs": {p: [v.summary() for v in vs] for p, vs in result.comparison.pairs.items()},
        }
        for p, cl in result.classes.items():
            text = " | ".join(" ~ ".join(c) for c in cl)
            print(f"{p:>6}: {len(cl)} classes: {text}", file=sys.stderr)
            for a, b in result.undecidable.get(p, []):  # no edge: the classes do not rest on it
                reason = result.comparison.verdict(a, b, p).reason
                print(f"{'':>6}  undecidable: {a} | {b}: {reason}", file=sys.stderr)
            for v in result.comparison.pairs[p]:  # as the report's verdict table says it
                if v.stalled:
                    print(f"{'':>6}  WARNING: {v.a} | {v.b}: {v.stall_warning}", file=sys.stderr)
                if v.diagnosis is not None:
                    print(f"{'':>6}  different: {v.a} | {v.b}: {v.reason}", file=sys.stderr)
        if out:
            _write_equivalence_outputs(out, "classes", doc, result.comparison, args)
    _emit(doc, args.json)
    return 0


def _phase(args) -> int:
    from optimorph.equivalence.phase import HETEROGENEITY, MANTISSA_BITS, phase_diagram
    from optimorph.report.equivalence_report import write_equivalence_report
    from optimorph.results import store
    from optimorph.results.equivalence_store import write_phase

    pairs = []
    for text in args.pairs:
        if "|" not in text:
            raise ValueError(f"a pair is 'A|B', got {text!r}")
        a, b = text.split("|", 1)
        pairs.append((a.strip(), b.strip()))
    bits = args.mantissa_bits or MANTISSA_BITS
    het = args.heterogeneity or HETEROGENEITY
    with _claimed(args, "phase-diagram") as out:
        store.write_config(out, "phase-diagram", _settings(args))
        done = {}
        names = list(dict.fromkeys(s for pair in pairs for s in pair))
        for i, name in enumerate(names):  # optimizers finished before an interrupt
            if (out / "checkpoints" / f"optimizer{i}.npz").exists():
                saved = store.read_arrays(out, f"checkpoints/optimizer{i}")
                done[name] = (saved["trajectories"], saved["stalled"])

        def checkpoint(name, trajectories, stalled):
            store.write_arrays(out, f"checkpoints/optimizer{names.index(name)}",
                               {"trajectories": trajectories, "stalled": stalled})  # fmt: skip

        pd = phase_diagram(
            pairs, mantissa_bits=bits, heterogeneity=het, steps=args.steps, seeds=args.seeds,
            done=done, on_optimizer=checkpoint,
        )  # fmt: skip
        doc = {
            "pairs": [list(p) for p in pd.pairs],
            "mantissa_bits": pd.mantissa_bits,
            "heterogeneity": pd.heterogeneity,
            "settings": pd.settings,
            "cells": pd.table(),
        }
        write_phase(out, doc, pd)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing to resume
        report = write_equivalence_report(out)
    for line in _phase_grid(pd):
        print(line, file=sys.stderr)
    print(f"report: {report}", file=sys.stderr)
    _emit(doc, args.json)
    return 0


def _phase_grid(pd) -> list[str]:
    """The phase diagram as text: per pair a grid of mantissa bits (rows) x heterogeneity
    (columns, labelled), then one legend line."""
    cols = [_short_number(h) for h in pd.heterogeneity]
    width = max(len(c) for c in cols) + 1
    lines = []
    for p, (a, b) in enumerate(pd.pairs):
        lines.append(f"{a} | {b}")
        lines.append(f"  {'heterogeneity':>13}: " + "".join(f"{c:>{width}}" for c in cols))
        for m, bits in enumerate(pd.mantissa_bits):
            row = "".join(f"{'#' if e else '.':>{width}}" for e in pd.equivalent[p, m])
            lines.append(f"  {f'mantissa {bits:>2}':>13}: {row}")
    lines.append(
        f"  legend: # equivalent (d/floor <= C={pd.settings.get('C', 10):g} throughout), "
        ". different; heterogeneity = max|g_i| / min|g_i|"
    )
    return lines


def _short_number(x: float) -> str:
    """A column label: 3 significant digits below 1000, else 1 or 2 as 2.7e3."""
    if x < 1000:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _write_equivalence_outputs(out: Path, kind: str, doc: dict, comparison, args) -> None:
    from optimorph.report.equivalence_report import write_equivalence_report
    from optimorph.results import store
    from optimorph.results.equivalence_store import write_comparison

    store.write_config(out, kind, _settings(args))
    write_comparison(out, doc, comparison)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    print(f"report: {write_equivalence_report(out)}", file=sys.stderr)


def _which_norm(args) -> int:
    from optimorph.equivalence.which_norm import which_norm

    found = which_norm(args.optimizer, samples=args.samples, problem=args.problem,
                       layout=args.layout)  # fmt: skip
    doc = {
        "optimizer": found.optimizer,
        "best": found.best,
        "exact": found.exact,
        "closest": found.closest,
        "best_cosine": found.best_cosine,
        "reason": found.reason,
        "verdict": found.verdict,
        "same_direction": found.same_direction,
        "samples": found.samples,
        "tolerance": found.tolerance,
        "layout": found.layout,
        "norms": found.table(),
    }
    if args.json:
        _emit(doc, True)
        return 0
    print(f"{'norm':<12} {'min cosine':>11} {'max defect':>11}   (over {found.samples} gradients)")
    for m in found.matches:
        print(f"{m.norm:<12} {m.cosine:>11.6f} {m.defect:>11.3g}")
    print(found.verdict)
    return 0


def _norms(args) -> int:
    import jax

    from optimorph.norms.modular import assign
    from optimorph.optimizers import resolve
    from optimorph.problems import problem

    spec = resolve(args.optimizer)
    if spec.name != "modular":
        raise ValueError(f"--optimizer must be a modular(...) spec, got {args.optimizer!r}")
    v = spec.values
    rules = (("embed", v["embed_norm"]), ("matrix", v["dense_norm"]), ("other", v["vector_norm"]))
    prob = problem(args.problem)
    rows = assign(prob.init(jax.random.key(0)), rules, {"embed": v["embed_mass"]})
    print(f"{'parameter':<28} {'shape':<14} {'norm':<12} {'mass':>6}   ({prob.name})")
    for a in rows:
        print(f"{a.path:<28} {str(a.shape):<14} {a.norm:<12} {a.mass:>6g}")
    op = "W^T" if v["layout"] == "in_out" else "W"
    print(f"modular norm = max over layers of mass x norm (matrix norms of the operator {op})")
    return 0


def _recipes_help() -> str:
    """``optimorph run --help``'s description: every registered recipe with its summary."""
    from optimorph.experiments.recipes import RECIPES

    import textwrap

    lines = [textwrap.fill(f"{r.name:<20} {r.summary}", 90, initial_indent="  ",
                           subsequent_indent=" " * 23) for r in RECIPES.values()]  # fmt: skip
    return "Run a named recipe. Recipes:\n" + "\n".join(lines)


def _experiment(args) -> int:
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
    out = args.out or Path("runs") / (args.experiment + ("-quick" if args.quick else ""))
    run_recipe(
        args.experiment,
        out,
        quick=args.quick,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        **overrides,
    )
    from optimorph.report.recipe_report import write_recipe_report  # after the run, as _train

    report = write_recipe_report(out)
    for f in read_json(out, "findings"):
        mark = status_of(f)
        print(f"[{'DID NOT HOLD' if mark == FAILED else mark}] {f['claim']}: {f['measured']}")
    print(f"report: {report}", file=sys.stderr)
    return 0


def _sweep(args) -> int:
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
    from optimorph.report.sweep_report import write_sweep_report  # after the run, as _train

    print(f"report: {write_sweep_report(args.out)}", file=sys.stderr)
    if report.failed:
        first = next(iter(report.failed.values()))
        print(f"optimorph: error: {len(report.failed)} of {report.cells} cells failed (first: "
              f"{first}); rerun the same command to retry them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _query(args) -> int:
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
        return format_number(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)

    shown = [[text(r[n]) for n in names] for r in rows[:limit]]
    numeric = [all(isinstance(r[n], (int, float)) or r[n] is None for r in rows) for n in names]
    widths = [max([len(n)] + [len(row[k]) for row in shown]) for k, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric, strict=True)).rstrip()  # fmt: skip

    print(line(list(names)))
    for row in shown:
        print(line(row))
    if len(rows) > limit:
        print(f"({len(rows) - limit} more rows; --limit N shows more, --format csv all)")
    elif not rows:
        print("(no rows)")


def _emit(doc: dict, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(doc, indent=2, default=str))


def _list(args) -> int:
    what = [args.what] if args.what else ["optimizers", "problems", "recipes", "norms"]
    for i, kind in enumerate(what):
        if len(what) > 1:
            print(("\n" if i else "") + f"# {kind}")
        if kind == "optimizers" and getattr(args, "match", None) == "torch":
            from optimorph.optimizers.external import MATCH_TORCH

            for name, (match, why) in MATCH_TORCH.items():
                print(f"torch:{name:<34} {match}\n    {why}")
        elif kind == "optimizers":
            from optimorph.optimizers import list_optimizers

            for e in list_optimizers():
                print(f"{e.name:<14} {e.summary}  [{e.family}]")
                for h in e.hparams:
                    print(f"    {h.describe():<45} {h.doc}")
        elif kind == "problems":
            from optimorph.problems import list_problems

            for name, params, doc in list_problems():
                print(f"{name:<16} {doc}")
                for param in params:  # "n: int = 500"
                    print(f"    {param}")
        elif kind == "recipes":
            from optimorph.experiments.recipes import RECIPES

            for recipe in RECIPES.values():
                print(f"{recipe.name:<20} {recipe.summary}  [{recipe.source}]")
        else:
            from optimorph.norms import NORMS

            for norm in NORMS.values():
                print(f"{norm.name:<12} {norm.doc}")
    return 0


def _train(args) -> int:
    from optimorph.engine import train
    from optimorph.results import write_run

    with _claimed(args, "train") as out:
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


def _demo(args) -> int:
    """What optimorph is for, in a few minutes: the zoo on noisy two moons, the tour's quick
    recipes, the headline equivalence table, and one index page linking every report."""
    from optimorph import demo

    index, table = demo.run(args.out, steps=args.steps, seeds=args.seeds, zoo_only=args.zoo_only,
                            workers=args.workers)  # fmt: skip
    print(table)
    print(f"report: {index}", file=sys.stderr)
    return 0


def _hessian(args) -> int:
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


def _report(args) -> int:
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


def _print_summary(result) -> None:
    """The final metrics table (summary.json's rule), then any divergence on stderr."""
    from optimorph.results.summary import final_table

    print(final_table(result))
    for line in result.divergence_messages():
        print(line, file=sys.stderr)


if __name__ == "__main__":
    entry()
