"""Recipes: named, configured reproductions of the source documents' results.

A :class:`Recipe` is a typed config (a frozen dataclass with a ``quick()`` variant; every departure
from the source's settings is a field), a run function that writes its results into a run
directory and returns its findings (the source's claim, the measured numbers, held / did not
hold), and the source it reproduces. ``optimorph run NAME`` runs one; ``optimorph report DIR``
redraws its figures and page from the stored files (:mod:`optimorph.report.recipe_report`).

:data:`RECIPES` is the catalogue: each entry's name, summary and source are plain text, and its
config and run function are named as ``"module:attribute"`` and imported on first use, so
listing the recipes (``optimorph list recipes``, ``optimorph run --help``) imports no recipe
module and no JAX.

>>> [name for name in ("batch-size", "proposal16", "edge-of-stability") if name in RECIPES]
['batch-size', 'proposal16', 'edge-of-stability']
>>> RECIPES["optimizer-tour"].config.__name__  # imported here, on first use
'TourConfig'
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optimorph.registry import Registry

if typing.TYPE_CHECKING:  # imported on use: listing the recipes imports none of them
    import numpy as np

    from optimorph.experiments import proposal16, tour

__all__ = ["Recipe", "RECIPES", "SCALES", "run_recipe", "make_config", "scales_of", "flatten",
           "unflatten"]

KIND = "recipe"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named reproduction (see the module docstring).

    ``config_at`` and ``run_at`` name the config class and the run function as
    ``"module:attribute"``; :attr:`config` and :attr:`run` import them. The run function is
    ``run(config, out, progress) -> findings``, or with ``trains=True`` a function
    ``fn(config, checkpoints=DIR) -> dict`` whose train runs, arrays and tables
    :func:`_train_recipe` stores beside the findings.
    """

    name: str
    summary: str
    source: str
    config_at: str
    run_at: str
    trains: bool = False

    @property
    def config(self) -> type:
        """The config class (a frozen dataclass with a ``quick()`` variant)."""
        return _attribute(self.config_at)

    @property
    def run(self) -> Callable[[Any, Path, bool], list[dict]]:
        """``run(config, out, progress) -> findings``."""
        fn = _attribute(self.run_at)
        return _train_recipe(fn) if self.trains else fn


def _attribute(where: str) -> Any:
    """The object ``"package.module:name"`` names, importing its module."""
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


RECIPES: Registry[Recipe] = Registry("recipe")


SCALES = ("quick", "medium", "full")


def scales_of(recipe: Recipe) -> tuple[str, ...]:
    """The scales ``recipe`` offers: quick and full always, medium when its config has one."""
    return tuple(s for s in SCALES if s != "medium" or hasattr(recipe.config, "medium"))


def make_config(recipe: Recipe, quick: bool = False, scale: str | None = None,
                **overrides: Any) -> Any:  # fmt: skip
    """The recipe's config at ``scale`` (``quick=True`` is ``scale="quick"``; default full)
    with fields replaced."""
    scale = _scale(recipe, quick, scale)
    config = recipe.config() if scale == "full" else getattr(recipe.config, scale)()
    fields = {f.name for f in dataclasses.fields(config)} - {"scale"}  # the scale: --scale
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"recipe {recipe.name}: unknown setting {', '.join(unknown)}; "
            f"its settings are {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(type(config))
    for name, value in overrides.items():
        default = getattr(config, name)
        if default is None and value is not None:  # check against the annotated type instead
            default = _example(hints.get(name))
        overrides[name] = _checked_setting(recipe.name, name, value, default)
    return dataclasses.replace(config, **overrides)


def _scale(recipe: Recipe, quick: bool, scale: str | None) -> str:
    """The scale asked for, checked against the ones the recipe offers."""
    if quick and scale not in (None, "quick"):
        raise ValueError(f"recipe {recipe.name}: --quick and --scale {scale} disagree; give one")
    scale = "quick" if quick else (scale or "full")
    offered = scales_of(recipe)
    if scale not in offered:
        raise ValueError(f"recipe {recipe.name}: no scale {scale!r}; it offers "
                         f"{', '.join(offered)}")  # fmt: skip
    return scale


def _example(hint: Any) -> Any:
    """A stand-in default for a setting whose default is None (``workers: int | None``): a
    value of the annotated type, so the given value is checked like one; None when unknown."""
    for kind, example in ((bool, False), (int, 1), (float, 1.0), (str, "")):
        if hint is kind or kind in typing.get_args(hint):
            return example
    return None


# Settings that may be zero (a count of things, a noise level, an exponent); every other number
# of a recipe is a size, a step count or a rate and must be positive.
_MAY_BE_ZERO = {"seed", "noise", "flip", "alpha", "weight_decay", "beta", "b1", "margin"}


def _checked_setting(recipe: str, name: str, value: Any, default: Any) -> Any:
    """``value`` for setting ``name`` (default ``default``), checked before any work starts:
    the default's type (a list for a tuple, an integer for a float), finite, and positive (or
    non-negative for the settings in ``_MAY_BE_ZERO``)."""
    where = f"recipe {recipe}: --set {name}={value!r}"
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{where}: give a non-empty list, e.g. {list(default)!r}")
        sample = default[0] if default else value[0]
        return tuple(_checked_setting(recipe, name, v, sample) for v in value)
    if default is None or isinstance(default, str):
        if default is not None and not isinstance(value, str):
            raise ValueError(f"{where}: give a string, e.g. {default!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: give True or False")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: give a number like {default!r}")
    if isinstance(default, int) and not float(value).is_integer():
        raise ValueError(f"{where}: give an integer like {default!r}")
    low_ok = value >= 0 if name in _MAY_BE_ZERO else value > 0
    if not math.isfinite(value) or not low_ok:
        bound = ">= 0" if name in _MAY_BE_ZERO else "> 0"
        raise ValueError(f"{where}: must be finite and {bound}")
    return int(value) if isinstance(default, int) else float(value)


def run_recipe(
    name: str,
    out: str | Path,
    *,
    quick: bool = False,
    scale: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Run recipe ``name`` at ``scale`` (quick, medium where the recipe has one, or full;
    ``quick=True`` is ``scale="quick"``) into the run directory ``out`` and return its path.

    ``config.json`` records the recipe, its settings and their scale; ``findings.json`` the
    findings. A rerun with ``resume=True`` continues an interrupted run.
    """
    from optimorph.experiments.findings import at_quick_scale
    from optimorph.results import store

    recipe = RECIPES.lookup(name)
    scale = _scale(recipe, quick, scale)
    quick = scale == "quick"
    config = make_config(recipe, scale=scale, **overrides)
    if hasattr(config, "check"):  # bad settings or missing data: stop before any work
        config.check()
    with store.claim(out, KIND, resume=resume, overwrite=overwrite) as run_dir:
        info = {"recipe": name, "summary": recipe.summary, "source": recipe.source,
                "quick": quick, "scale": scale}  # fmt: skip
        store.write_config(run_dir, KIND, dataclasses.asdict(config), **info)
        findings = recipe.run(config, run_dir, progress)
        if quick:  # claims the recipe marks as beyond its quick variant are not judged
            findings = at_quick_scale(findings)
        store.write_json(run_dir, "findings", findings)
    return Path(out)


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays as ``{"dense0/w": array, ...}`` (for ``.npz`` files)."""
    import numpy as np

    if isinstance(tree, dict):
        out: dict[str, np.ndarray] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}/"))
        return out
    return {prefix.rstrip("/"): np.asarray(tree)}


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """The inverse of :func:`flatten`."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The tour


def _run_batch_size(config: tour.BatchSizeConfig, out: Path, progress: bool) -> list[dict]:
    import numpy as np

    from optimorph.experiments import tour
    from optimorph.results import store

    done = {}
    for b in config.batch_sizes:  # cells finished by an earlier, interrupted run
        if (out / "cells" / f"B{b}.npz").exists():
            cell = store.read_arrays(out, f"cells/B{b}")
            cell = {k: (v.item() if v.ndim == 0 else v) for k, v in cell.items()}
            cell["params"] = unflatten(store.read_arrays(out, f"cells/B{b}_params"))
            done[b] = cell
    if done:
        _log(progress, f"batch-size: resuming; done: {sorted(done)}")

    def save(cell: dict) -> None:
        b = cell["batch"]
        store.write_arrays(out, f"cells/B{b}_params", flatten(cell["params"]))
        store.write_arrays(out, f"cells/B{b}", {k: v for k, v in cell.items() if k != "params"})
        _log(progress, f"batch-size: B={b} done in {cell['wall']:.1f} s")

    result = tour.batch_size(config, checkpoints=str(out / "checkpoints"), done=done, on_cell=save,
                             progress=progress)  # fmt: skip
    for b, grid in result["boundaries"].items():
        store.write_arrays(out, f"boundary_B{b}", grid)
    numpy = result["numpy"]
    store.write_json(
        out,
        "timing",
        {
            "numpy_steps_per_s": {str(b): r for b, r in numpy["rates"].items()},
            "numpy_projected_s": numpy["projected_s"],
            "optimorph_s": numpy["optimorph_s"],
            # NumPy / optimorph time for the same steps, one per interleaved round (the cells'
            # times include compilation and run in parallel: not a speed comparison)
            "speedup": float(np.median(numpy["speedup"])),
            "speedup_samples": numpy["speedup"],
            "samples_steps_per_s": {side: {str(b): r for b, r in rates.items()}
                                    for side, rates in numpy["samples"].items()},  # fmt: skip
            "optimorph_wall_s": numpy["wall_s"],
            "resumed_cells": numpy["resumed"],
        },
    )
    return result["findings"]


def _train_recipe(fn: Callable) -> Callable[[Any, Path, bool], list[dict]]:
    """A recipe run around a function whose result carries a TrainResult (``"result"``, stored
    as the train run directory ``<out>/train``) or several (``"results"``: ``{name: result}``,
    stored in ``<out>/train-<name>``), beside the recipe's own arrays."""

    def run(config: Any, out: Path, progress: bool) -> list[dict]:
        from optimorph.results import store
        from optimorph.results.rundir import write_run

        result = fn(config, checkpoints=str(out / "checkpoints"))
        if "result" in result:
            write_run(result["result"], out / "train")
        for name, run_result in result.get("results", {}).items():  # several train runs
            write_run(run_result, out / f"train-{name}")
        for name, grid in result.get("boundaries", {}).items():
            store.write_arrays(out, f"boundary_{name}", grid)
        for name, images in result.get("weights", {}).items():
            store.write_arrays(out, f"weights_{name}", {"images": images})
        for name, table in result.get("tables", {}).items():  # rows of dicts, drawn as tables
            store.write_json(out, f"table_{name}", table)
        if "dataset" in result:
            store.write_json(out, "dataset", {"dataset": result["dataset"]})
        return result["findings"]

    return run


RECIPES.add(
    "batch-size",
    Recipe(
        "batch-size",
        "SGD on noisy two moons at every batch size up to full batch: loss, time, "
        "generalisation, decision boundaries",
        "the optimizers tour, section 1",
        "optimorph.experiments.tour:BatchSizeConfig",
        "optimorph.experiments.recipes:_run_batch_size",
    ),
)
RECIPES.add(
    "stretched-moons",
    Recipe(
        "stretched-moons",
        "SGD against momentum 0.99 on the ill-conditioned stretched moons",
        "the optimizers tour, section 2.1",
        "optimorph.experiments.tour:StretchedMoonsConfig",
        "optimorph.experiments.tour:stretched_moons",
        trains=True,
    ),
)
RECIPES.add(
    "linear-weights",
    Recipe(
        "linear-weights",
        "a linear classifier trained by SGD and by Adam: accuracy and the class weights",
        "the optimizers tour, section 4",
        "optimorph.experiments.tour:LinearWeightsConfig",
        "optimorph.experiments.tour:linear_weights",
        trains=True,
    ),
)
RECIPES.add(
    "optimizer-tour",
    Recipe(
        "optimizer-tour",
        "SGD, momentum, RMSprop and Adam on one problem with one schedule",
        "the optimizers tour",
        "optimorph.experiments.tour:TourConfig",
        "optimorph.experiments.tour:optimizer_tour",
        trains=True,
    ),
)

RECIPES.add(
    "assumptions-convex",
    Recipe(
        "assumptions-convex",
        "GD on least squares, AdamW and SGD on logistic regression over real datasets: "
        "convexity gaps, convexity ratio, update correlation",
        "the empirical-assumptions study, convex tasks",
        "optimorph.experiments.assumptions:ConvexConfig",
        "optimorph.experiments.assumptions:convex",
        trains=True,
    ),
)
RECIPES.add(
    "assumptions-deep",
    Recipe(
        "assumptions-deep",
        "SGD-momentum and AdamW on an MLP and a CNN (Fashion-MNIST), constant and cosine "
        "rates, every trajectory probe",
        "the empirical-assumptions study, deep networks",
        "optimorph.experiments.assumptions:DeepConfig",
        "optimorph.experiments.assumptions:deep",
        trains=True,
    ),
)
RECIPES.add(
    "edge-of-stability",
    Recipe(
        "edge-of-stability",
        "full-batch GD on a tanh MLP at several rates: sharpness rises to 2/lr and hovers; "
        "smoothness tracks it; full-batch Adam's preconditioned sharpness against 38/lr",
        "the empirical-assumptions study, section on smoothness (after Cohen et al.)",
        "optimorph.experiments.assumptions:EdgeConfig",
        "optimorph.experiments.assumptions:edge_of_stability",
        trains=True,
    ),
)

RECIPES.add(
    "norms-least-squares",
    Recipe(
        "norms-least-squares",
        "steepest descent under six norms on matrix-valued least squares, each with a tuned "
        "rate; Shampoo without accumulation beside spectral descent",
        "the norms anthology, experiment 1",
        "optimorph.experiments.norms_study:NormsLeastSquaresConfig",
        "optimorph.experiments.norms_study:norms_least_squares",
        trains=True,
    ),
)
RECIPES.add(
    "orthogonalization",
    Recipe(
        "orthogonalization",
        "SVD, Newton-Schulz (cubic, quintic), Polar Express and Shampoo's roots: singular-value "
        "band, error and time by shape and format",
        "the norms anthology, experiment 3 (Newton-Schulz vs SVD vs Shampoo)",
        "optimorph.experiments.norms_study:OrthogonalizationConfig",
        "optimorph.experiments.norms_study:orthogonalization",
        trains=True,
    ),
)

RECIPES.add(
    "modular-norm",
    Recipe(
        "modular-norm",
        "an embedding model on a + b mod 97 trained by modular-norm descent, Muon, Adam and "
        "SGD: train and test accuracy",
        "the norms anthology, experiment 2",
        "optimorph.experiments.norms_study:ModularConfig",
        "optimorph.experiments.norms_study:modular_norm",
        trains=True,
    ),
)


def _run_proposal16(config: proposal16.Recipe, out: Path, progress: bool) -> list[dict]:
    from optimorph.experiments import proposal16

    doc = proposal16.run(out, config, progress=progress)
    return [
        {**row, "claim": f"[{label}] {row['claim']}"}  # each expectation is a finding already
        for label, res in doc["problems"].items()
        for row in res["expectations"]
    ]


RECIPES.add(
    "proposal16",
    Recipe(
        "proposal16",
        "the zoo's equivalence classes at fp16, fp32 and fp64 (the proposal's five experiments)",
        "the numerical-equivalence proposal",
        "optimorph.experiments.proposal16:Recipe",
        "optimorph.experiments.recipes:_run_proposal16",
    ),
)


RECIPES.add(
    "low-bit-states",
    Recipe(
        "low-bit-states",
        "Adam and AdamW with 8-bit, 4-bit, FP8 and MX optimizer states against fp32 states: "
        "p-equivalence (d/floor), final loss and memory per parameter, on least squares over h "
        "and the Fashion-MNIST MLP",
        "issue 20 (8-bit Adam, torchao 4-bit AdamW, FP8-LM, OCP MX v1.0)",
        "optimorph.experiments.low_bit_states:LowBitConfig",
        "optimorph.experiments.low_bit_states:run",
    ),
)


RECIPES.add(
    "mxfp4-training",
    Recipe(
        "mxfp4-training",
        "gradients stored in MXFP4, and backward passes whose matrix products take MXFP4 "
        "operands (Tseng et al.'s recipe), rounded to nearest or stochastically, with or "
        "without a random or a deterministic Hadamard transform, against bf16 training on "
        "the Fashion-MNIST MLP and CNN: p-equivalence (d/floor), where each parts, final loss gap",
        "issue 20 (Tseng et al. 2025, arXiv 2502.20586; arXiv 2605.09825)",
        "optimorph.experiments.mxfp4_training:MXFP4Config",
        "optimorph.experiments.mxfp4_training:run",
    ),
)


RECIPES.add(
    "implementations",
    Recipe(
        "implementations",
        "Adam, AdamW, SGD momentum, Nesterov, RMSprop, Adagrad, NAdam and RAdam as torch.optim, "
        "optax and optimorph implement them, and torch's for-loop, foreach and fused paths: "
        "verdicts (d/floor) at fp32, bf16 and fp16 on a small MLP, each different pair with the "
        "step, slot and named cause where it parts",
        "issue 19 (is your framework's Adam the Adam you think?)",
        "optimorph.experiments.implementations:ImplementationsConfig",
        "optimorph.experiments.implementations:run",
    ),
)
