"""Problems by name: ``problem("two-moons(n=500, flip=0.1)")`` builds data, model, loss and metrics.

A spec is a registered name with keyword arguments (see :func:`list_problems`), or
``package.module:factory(args)`` naming a user's function that returns a :class:`Problem`.
Arguments are type-checked and range-checked; every mistake raises one
:class:`~optimorph.spec.SpecError` that names the valid choices. A built Problem's ``name`` is
its canonical spec, so ``problem(p.name)`` rebuilds it.

>>> p = problem("quadratic(dim=10, kappa=1e3)")
>>> p.name, p.full_batch
('quadratic(dim=10, kappa=1000.0)', True)
>>> problem("two-moons", n=100).name
'two-moons(n=100, noise=0.1, flip=0.1)'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from optimorph.problems import datasets, synthetic
from optimorph.problems.base import Batch, Params, Problem
from optimorph.problems.datasets import DatasetNotFound
from optimorph.problems.registry import Param, ProblemInfo
from optimorph.registry import Registry
from optimorph.spec import Call, SpecError, is_import_path, load_import_path, parse

__all__ = [
    "Problem",
    "Batch",
    "Params",
    "Param",
    "ProblemInfo",
    "DatasetNotFound",
    "problem",
    "list_problems",
]

_REGISTRY: Registry = Registry("problem")
for _factory in (
    synthetic.two_moons,
    synthetic.stretched_moons,
    synthetic.quadratic,
    synthetic.least_squares,
    datasets.logistic,
    datasets.digits,
    datasets.mnist1d,
    datasets.fashion_mnist,
    datasets.mnist,
    synthetic.modular_addition,
):
    _REGISTRY.add(_factory.info.name, _factory)


def problem(spec: str | Call | Problem, **overrides: Any) -> Problem:
    """Build the Problem a spec names.

    Args:
      spec: ``"name(key=value, ...)"``, a parsed :class:`~optimorph.spec.Call`,
        ``"package.module:factory(...)"`` (imported and called; must return a Problem), or a
        Problem (returned as is).
      **overrides: arguments that replace the spec's, e.g. ``problem("two-moons", seed=3)``.

    Returns:
      The Problem, its ``name`` set to the canonical spec.

    Raises:
      SpecError: unknown name (lists the valid ones), unknown or mistyped argument (lists the
        valid arguments with types and defaults), out-of-range value (says the valid range), or a
        user factory that does not return a Problem.
      DatasetNotFound: a dataset's files are missing (says where it looked and how to get them).
    """
    if isinstance(spec, Problem):
        if overrides:
            raise SpecError(f"cannot apply {sorted(overrides)} to an already built Problem")
        return spec
    call = parse(spec)
    kwargs = {**call.kwargs, **overrides}
    if is_import_path(call.name):
        factory = load_import_path(call.name)
        try:
            built = factory(*call.args, **kwargs)
        except Exception as err:  # the user's code: report it in one line, naming the spec
            raise SpecError(f"{call} raised {type(err).__name__}: {err}") from None
        if not isinstance(built, Problem):
            raise SpecError(
                f"{call.name} returned {type(built).__name__}, not a Problem; build one with "
                "Problem(...) or Problem.from_functions(init, loss, train)"
            )
        return dataclasses.replace(built, name=str(Call(call.name, call.args, kwargs)))
    if call.name not in _REGISTRY:
        raise SpecError(
            f"unknown problem {call.name!r}; valid: {', '.join(_REGISTRY)} "
            "(or 'package.module:factory(...)' for your own)"
        )
    if call.args:
        valid = ", ".join(str(p) for p in _REGISTRY[call.name].info.params)
        raise SpecError(
            f"{call.name} takes keyword arguments only (got positional {list(call.args)}); "
            f"valid arguments: {valid}"
        )
    return _REGISTRY[call.name](**kwargs)


def list_problems() -> list[ProblemInfo]:
    """``(name, params, description)`` for every registered problem, ``params`` a tuple of
    :class:`Param` ``(name, type, default)`` whose ``str`` is ``"n: int = 500"``.

    >>> info = list_problems()[0]
    >>> info.name, str(info.params[0])
    ('two-moons', 'n: int = 500')
    >>> info.description
    'Two interleaving moons with noisy labels, an MLP 2-64-64-2 and cross-entropy.'

    """
    return [factory.info for factory in _REGISTRY.values()]
