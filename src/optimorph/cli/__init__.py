"""The ``optimorph`` command: list the zoo, train, run the demo, redraw reports.

Human-readable output goes to stderr (progress) and stdout (tables); bad input ends with one line
``optimorph: error: ...`` naming the fix and exit status 2, never a traceback from inside JAX.

One module per command (or per family of commands: ``equivalence`` holds compare, classes and
phase-diagram), each with ``add(sub)`` adding its parser and the function that runs it; the
options they share, and the value types, are in :mod:`optimorph.cli.args`. No module here
imports JAX or the commands' work at import time: a listing must start in a fraction of a
second.
"""

from __future__ import annotations

import sys
import warnings

from optimorph.cli import demo, equivalence, hessian, listing, norms, recipes, report, sweep, train
from optimorph.cli.args import Parser, UsageError, precision_specs

__all__ = ["entry", "main", "build_parser", "precision_specs"]

# The order of the commands in --help.
COMMANDS = (listing, train, demo, equivalence, norms, recipes, sweep, hessian, report)


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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
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
    # Programs of 0.1-0.5 s (each group's init, the step-0 evaluation, the defects' replays) are
    # worth keeping too: a warm proposal16 CNN job took 64 s against 67 s at 0.5 s.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


def _host_devices(n: int | None) -> None:
    """Make XLA's CPU platform show ``n`` devices (``--devices``): read when JAX starts its
    backends, so it is set before anything computes. An explicit count in XLA_FLAGS wins."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if n and n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _run(args) -> int:
    if not _lists(args):  # a listing computes nothing: `list recipes` imports no JAX at all
        _host_devices(getattr(args, "devices", None))
        from optimorph.cpu import per_operation_fp16

        per_operation_fp16()  # fp16 rounds after each operation on every x86 CPU (cpu.py)
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
    if args.run is recipes.run_command:
        return args.experiment is None
    return args.run is listing.list_command


def build_parser() -> Parser:
    p = Parser(prog="optimorph", description=__doc__.splitlines()[0])
    p.add_argument(
        "--allow-import",
        action="store_true",
        help="allow 'pkg.module:factory(...)' specs: imports that module and calls the factory",
    )
    sub = p.add_subparsers(metavar="COMMAND", help="one of the commands below; COMMAND --help")
    for command in COMMANDS:
        command.add(sub)
    return p
