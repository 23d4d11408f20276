"""The recipe catalogue: plain text to list, and every entry's config and run function import."""

import dataclasses
import inspect
import subprocess
import sys

import pytest

from optimorph.experiments.recipes import RECIPES, make_config


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_catalogue_entry_names_a_config_and_a_run_function_that_exist(name):
    recipe = RECIPES[name]
    assert recipe.name == name and recipe.summary.strip() and recipe.source.strip()
    config = recipe.config
    assert dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen
    assert type(config.quick()) is config and type(make_config(recipe, quick=True)) is config
    target = recipe.run_at.partition(":")
    fn = getattr(sys.modules[target[0]], target[2])  # imported by recipe.run
    assert callable(recipe.run) and callable(fn)
    parameters = inspect.signature(fn).parameters
    if recipe.trains:  # fn(config, checkpoints=DIR) -> dict, stored by the recipe run
        assert next(iter(parameters)) == "config" and "checkpoints" in parameters
        assert recipe.run is not fn
    else:  # run(config, out, progress) -> findings
        assert len(parameters) == 3 and recipe.run is fn


def test_the_catalogue_imports_no_recipe_module_until_one_is_used():
    code = (
        "import sys\n"
        "from optimorph.experiments.recipes import RECIPES\n"
        "lines = [f'{r.name} {r.summary} {r.source}' for r in RECIPES.values()]\n"
        "heavy = ('jax', 'numpy', 'scipy', 'matplotlib', 'optimorph.experiments.tour')\n"
        "print(len(lines), [m for m in heavy if m in sys.modules])\n"
        "RECIPES['optimizer-tour'].config\n"
        "print('optimorph.experiments.tour' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == [f"{len(RECIPES)} []", "True"]


def test_no_two_entries_name_the_same_config_or_run_function():
    # a copied entry that still points at its neighbour's code would run the wrong recipe
    for field in ("config_at", "run_at"):
        named = [getattr(r, field) for r in RECIPES.values()]
        assert len(set(named)) == len(named), field
