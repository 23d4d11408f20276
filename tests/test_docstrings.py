"""Every example in every module's docstrings runs and gives what it shows (STYLE.md item 7)."""

import doctest
import importlib
import pkgutil

import pytest

import optimorph

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(optimorph.__path__, "optimorph.")
    if m.name != "optimorph.cli" and not m.name.endswith(".__main__")  # __main__ runs the command
) + ["optimorph"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_most_modules_have_examples():
    with_examples = [
        n
        for n in MODULES
        if doctest.DocTestFinder().find(importlib.import_module(n))
        and any(t.examples for t in doctest.DocTestFinder().find(importlib.import_module(n)))
    ]
    assert len(with_examples) >= len(MODULES) // 2, with_examples
