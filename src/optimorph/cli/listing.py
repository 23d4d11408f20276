"""``optimorph list``: the registered optimizers, problems, recipes and norms."""

from __future__ import annotations



def add(sub) -> None:
    """Add this module's command(s) to the ``optimorph`` parser's subcommands."""
    ls = sub.add_parser("list", help="list registered optimizers, problems, recipes and norms")
    ls.add_argument(
        "what",
        nargs="?",
        choices=["optimizers", "problems", "recipes", "norms"],
        help="what to list (default: everything)",
    )
    ls.add_argument("--match", choices=["torch"], default=None,
                    help="optimizers: the optimorph spec p-equivalent to each torch.optim default")
    ls.set_defaults(run=list_command)


def list_command(args) -> int:
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
