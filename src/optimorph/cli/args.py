"""The commands' shared argument vocabulary: the parser class, value types and option groups.

>>> integer(1)("3"), number(0.0)("2.5"), list_of(integer(1), "seeds")("1, 2")
(3, 2.5, [1, 2])
>>> precision_specs("fp16;params=bf16,state=fp32")
['fp16', 'params=bf16,state=fp32']
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse with its errors in the command's one-line form (``optimorph: error: ...``), every
    option's default in its help, and a description that may be a function, called only when the
    help is shown (the recipe list needs the recipe registry, too slow to import for every
    command)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def format_help(self) -> str:
        if callable(self.description):
            self.description = self.description()
        return super().format_help()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
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


class UsageError(Exception):
    """A command line argparse refused; :func:`main` prints it in one line and returns 2."""


def integer(low: int, high: int | None = None):
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


def number(low: float, *, open_low: bool = False):
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


def list_of(item, what: str):
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


def output_dir(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a directory, e.g. --out runs/mine")
    return Path(text)


def precision_list(text: str) -> list[str]:
    found = precision_specs(text)
    if not found:
        raise argparse.ArgumentTypeError(f"give at least one precision, got {text!r}")
    return found


POSITIVE = integer(1)


def add_train_options(p: argparse.ArgumentParser) -> None:
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
        type=number(0.0),
        default=30.0,
        metavar="SECONDS",
        help="seconds between checkpoints of a long run (default 30)",
    )


def add_equivalence_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problem", required=True,
                   help="problem spec, e.g. 'least-squares(n=64, d=8, hetero=10)'")
    p.add_argument(
        "--precision",
        type=precision_list,
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
        "--C", type=number(0.0, open_low=True), default=10.0, help="noise-floor constant (> 0)"
    )
    p.add_argument(
        "--out", type=output_dir, default=None,
        help="also write figures, JSON and report.html here (default: print only)",
    )
    add_output_policy(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_output_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")


def split_specs(text: str) -> list[str]:
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


def precision_specs(text: str) -> list[str]:
    """'fp16,fp32' or, when a precision has roles (which contain commas), 'fp16;bf16,v=fp32'."""
    return [p.strip() for p in text.split(";" if ";" in text else ",") if p.strip()]


def run_settings(args) -> dict:
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


def claimed(args, kind: str):
    """The run directory held for the command (a no-op context without --out)."""
    import contextlib

    from optimorph.results import store

    if args.out is None:
        return contextlib.nullcontext(None)
    return store.claim(args.out, kind, resume=args.resume, overwrite=args.overwrite)


def verdict_settings(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k != "run"}  # fmt: skip


def emit_json(doc: dict, as_json: bool) -> None:
    if as_json:
        import json

        print(json.dumps(doc, indent=2, default=str))
