"""The examples in the problems package's docstrings run and give what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "optimorph.problems",
    "optimorph.problems.idx",
    "optimorph.problems.models",
    "optimorph.problems.supervised",
    "optimorph.problems.registry",
    "optimorph.problems.synthetic",
    "optimorph.problems.datasets",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
