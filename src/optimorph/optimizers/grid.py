"""Hyperparameter grids in spec strings: ``adam(lr=[1e-4, 3e-4, 1e-3])``, ``lr=logspace(1e-4, 1e-2, 5)``.

A list, ``logspace(low, high, n)`` (n values from low to high, evenly spaced in log, both ends
included) or ``linspace(low, high, n)`` as the value of a hyperparameter makes the spec a grid:
:func:`expand` turns it into one spec per point (several grid hyperparameters: every
combination). ``train`` runs the points that differ only in numbers (learning rates, betas) as
lanes of one compiled program, and the summary picks the best point of each grid by the one
ranking rule, :func:`optimorph.results.summary.rank` (validation loss when the problem holds a
validation split out, training-set loss otherwise; it says which).

logspace/linspace values are rounded to 3 significant digits, so that labels, tables and files
name the value that was run (``3.16e-04``, not ``0.00031622776601683794``).

>>> expand("adam(lr=logspace(1e-4, 1e-2, 3), b2=0.99)").members
['adam(lr=0.0001, b2=0.99)', 'adam(lr=0.001, b2=0.99)', 'adam(lr=0.01, b2=0.99)']
>>> expand("sgd(lr=0.1)").members
['sgd(lr=0.1)']
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np

from optimorph import spec as spec_lib
from optimorph.spec import Call, SpecError

__all__ = ["Grid", "expand", "is_grid_value", "axis_values"]

_RANGES = ("logspace", "linspace")
MAX_POINTS = 1000


@dataclasses.dataclass(frozen=True)
class Grid:
    """A spec and the specs it expands to.

    Attributes:
      text: the spec as given.
      members: one spec string per grid point (just ``[text]`` when it is no grid).
      axes: ``{hyperparameter: values}`` of the grid, in the order of ``members``' product.
    """

    text: str
    members: list[str]
    axes: dict[str, list]

    @property
    def is_grid(self) -> bool:
        return bool(self.axes)


def is_grid_value(value: Any) -> bool:
    """A list or a ``logspace``/``linspace`` call: a grid of values, not one value."""
    return isinstance(value, list) or (isinstance(value, Call) and value.name in _RANGES)


def expand(text: Any) -> Grid:
    """The grid points of a spec string (anything else is one point, unchanged).

    Raises:
      SpecError: a malformed range (``logspace`` needs 0 < low, high and an integer n >= 2) or
        an empty list.
    """
    if not isinstance(text, str):
        return Grid(str(text), [text], {})
    call = spec_lib.parse(text)
    args, kwargs = list(call.args), dict(call.kwargs)
    if len(args) == 1 and is_grid_value(args[0]):  # "sgd([0.1, 0.2])": the lr
        kwargs = {"lr": args.pop(), **kwargs}
    axes = {k: axis_values(k, v, text) for k, v in kwargs.items() if is_grid_value(v)}
    if not axes:
        return Grid(text, [text], {})
    size = math.prod(len(v) for v in axes.values())
    if size > MAX_POINTS:
        raise SpecError(f"{text!r} is a grid of {size} points; at most {MAX_POINTS} per spec")
    members = []
    for point in itertools.product(*axes.values()):
        chosen = dict(kwargs, **dict(zip(axes, point)))
        members.append(str(Call(call.name, tuple(args), chosen)))
    return Grid(text, members, axes)


def axis_values(name: str, value: Any, text: str) -> list:
    """The points of one grid value: a list as given, a range rounded to 3 significant digits.

    Args:
      name: the hyperparameter, for messages.
      value: a list or a parsed ``logspace``/``linspace`` call (see :func:`is_grid_value`).
      text: where it was written, for messages.

    >>> axis_values("lr", spec_lib.parse("f(logspace(1e-3, 1e-1, 3))").args[0], "lr")
    [0.001, 0.01, 0.1]
    """
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{name}=[] in {text!r}: a grid needs at least one value")
        if any(is_grid_value(v) for v in value):
            raise SpecError(f"{name} in {text!r}: a grid's values must be plain values")
        return list(value)
    kind = value.name
    usage = f"{kind}(low, high, n), e.g. {name}={kind}(1e-4, 1e-2, 5)"
    if value.kwargs or len(value.args) != 3:
        raise SpecError(f"{name}={value} in {text!r}: write {usage}")
    low, high, n = value.args
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high, n))
    if not numbers or not (isinstance(n, int) and n >= 2) or not math.isfinite(low + high):
        raise SpecError(f"{name}={value} in {text!r}: write {usage} (finite ends, integer n >= 2)")
    if kind == "logspace":
        if low <= 0 or high <= 0:
            raise SpecError(f"{name}={value} in {text!r}: logspace needs low, high > 0")
        points = np.geomspace(low, high, n)
    else:
        points = np.linspace(low, high, n)
    return [float(f"{x:.3g}") for x in points]
