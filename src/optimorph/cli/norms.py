"""``optimorph which-norm`` and ``norms``: steepest descent's norm, the modular norm."""

from __future__ import annotations


from optimorph.cli.args import POSITIVE, emit_json


def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
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
    wn.set_defaults(run=which_norm_command)

    nm = sub.add_parser("norms", help="the modular norm's norm per layer of a problem's model")
    nm.add_argument("problem", help="a problem spec, e.g. 'modular-addition(p=97)'")
    nm.add_argument("--optimizer", default="modular", help="a modular(...) spec: its norm rules")
    nm.set_defaults(run=norms_command)


def which_norm_command(args) -> int:
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
        emit_json(doc, True)
        return 0
    print(f"{'norm':<12} {'min cosine':>11} {'max defect':>11}   (over {found.samples} gradients)")
    for m in found.matches:
        print(f"{m.norm:<12} {m.cosine:>11.6f} {m.defect:>11.3g}")
    print(found.verdict)
    return 0


def norms_command(args) -> int:
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
