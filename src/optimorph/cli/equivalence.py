"""``optimorph compare``, ``classes`` and ``phase-diagram``: p-equivalence verdicts."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from optimorph.cli.args import (
    add_equivalence_options,
    add_output_policy,
    claimed,
    emit_json,
    integer,
    list_of,
    number,
    output_dir,
    POSITIVE,
    run_settings,
    split_specs,
    verdict_settings,
)
from optimorph.equivalence.classes import count_text


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    cmp_ = sub.add_parser("compare", help="are two optimizers p-equivalent? (noise-floor rule)")
    cmp_.add_argument("a", help="optimizer spec A")
    cmp_.add_argument("b", help="optimizer spec B")
    add_equivalence_options(cmp_)
    cmp_.set_defaults(run=compare_command)

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
    add_equivalence_options(cls)
    cls.set_defaults(run=classes_command)

    ph = sub.add_parser("phase-diagram", help="equivalence over mantissa bits x heterogeneity")
    ph.add_argument("--pairs", nargs="+", required=True,
                    help="optimizer pairs, each 'A|B', e.g. 'sgd(lr=0.1)|momentum(lr=0.1, beta=0)'")
    ph.add_argument(
        "--problem-family",
        default="quadratic",
        choices=["quadratic", "least-squares"],
        help="quadratic: diagonal, its condition number is the heterogeneity; least-squares: "
        "features scaled over the heterogeneity (default quadratic)",
    )
    ph.add_argument(
        "--mantissa-bits",
        type=list_of(integer(1, 52), "mantissa width"),
        default=None,
        help="comma-separated, each in 1..52 (default: 4,5,7,8,10,12,16,20,23,30,40,52)",
    )
    ph.add_argument(
        "--heterogeneity",
        type=list_of(number(1.0), "heterogeneity"),
        default=None,
        help="comma-separated, each >= 1 (max|g_i| / min|g_i|) (default: 8 values log-spaced "
        "from 1 to 1e4)",
    )
    ph.add_argument("--steps", type=POSITIVE, default=200, help="training steps per cell")
    ph.add_argument("--seeds", type=POSITIVE, default=3, help="seeds per cell")
    ph.add_argument("--out", type=output_dir, required=True, help="run directory to write")
    add_output_policy(ph)
    ph.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ph.set_defaults(run=phase_diagram_command)


def compare_command(args) -> int:
    from optimorph.equivalence.compare import compare

    with claimed(args, "compare") as out:
        ckpt = out / "checkpoints" if out else None
        precisions = args.precision
        result = compare(
            args.a, args.b, precision=precisions, checkpoint_dir=ckpt, diagnose=True,
            **run_settings(args),
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
    emit_json(doc, args.json)
    return 0


def classes_command(args) -> int:
    from optimorph.equivalence.compare import classes

    with claimed(args, "classes") as out:
        specs = split_specs(args.optimizers)
        ckpt = out / "checkpoints" if out else None
        result = classes(
            specs, precisions=args.precision, checkpoint_dir=ckpt, diagnose=args.diagnose,
            **run_settings(args),
        )
        doc = {
            "problem": result.comparison.problem,
            "optimizers": specs,
            "precisions": {p: c for p, c in result.classes.items()},
            "non_transitive": result.non_transitive,
            "stalled_pairs": result.stalled_pairs,
            "undecidable": result.undecidable,
            "class_range": result.class_range,
            "pairs": {p: [v.summary() for v in vs] for p, vs in result.comparison.pairs.items()},
        }
        for p, cl in result.classes.items():
            text = " | ".join(" ~ ".join(c) for c in cl)
            counted = count_text(len(cl), result.class_range.get(p))
            print(f"{p:>6}: {counted}: {text}", file=sys.stderr)
            for v in result.comparison.pairs[p]:  # the verdicts the range rests on
                if v.alternative is not None:
                    print(f"{'':>6}  seed-split: {v.a} | {v.b}: {v.outcome}, d/floor "
                          f"{v.distance_ratio:.3g}, {v.seeds_against} of "
                          f"{len(v.ratio_per_seed)} seeds on the other side of C",
                          file=sys.stderr)  # fmt: skip
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
    emit_json(doc, args.json)
    return 0


def phase_diagram_command(args) -> int:
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
    with claimed(args, "phase-diagram") as out:
        store.write_config(out, "phase-diagram", verdict_settings(args))
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
            family=args.problem_family, done=done, on_optimizer=checkpoint,
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
    emit_json(doc, args.json)
    return 0


def _phase_grid(pd) -> list[str]:
    """The phase diagram as text: per pair a grid of mantissa bits (rows) x heterogeneity
    (columns, labelled), then one legend line."""
    from optimorph.report.style import short_number  # matplotlib: imported when drawing only

    cols = [short_number(h) for h in pd.heterogeneity]
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


def _write_equivalence_outputs(out: Path, kind: str, doc: dict, comparison, args) -> None:
    from optimorph.report.equivalence_report import write_equivalence_report
    from optimorph.results import store
    from optimorph.results.equivalence_store import write_comparison

    store.write_config(out, kind, verdict_settings(args))
    write_comparison(out, doc, comparison)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # complete: nothing left to resume
    print(f"report: {write_equivalence_report(out)}", file=sys.stderr)
