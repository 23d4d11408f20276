"""Problem factories as registry entries: typed keyword arguments, validated, canonically named.

A factory is a plain function with keyword-only, type-hinted arguments that all have defaults.
Decorating it with :func:`registered` gives it a spec name, checks and coerces every argument
against its type hint (an ``int`` for a ``float``, ``5e2`` for an ``int``, a list for a tuple),
turns range errors into :class:`~optimorph.spec.SpecError` naming the problem, and sets the
returned Problem's name to its canonical spec: the ``shown`` arguments always, the others when
they differ from their defaults, in signature order.

>>> from optimorph.problems.base import Problem
>>> @registered("toy", shown=("n",))
... def toy(*, n: int = 3, scale: float = 1.0) -> Problem:
...     '''A toy problem.'''
...     check(n > 0, "n", n, "n > 0")
...     return Problem.from_functions(lambda key: {}, lambda p, b: 0.0, ([0.0] * n,))
>>> toy(n=4.0, scale=2).name
'toy(n=4, scale=2.0)'
>>> str(toy.info.params[1])
'scale: float = 1.0'
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Union

from optimorph.problems.base import VALIDATION, Problem, hold_out
from optimorph.spec import Call, SpecError

__all__ = ["Param", "ProblemInfo", "registered", "check"]


class Param(NamedTuple):
    """One argument of a problem factory: name, type (as text) and default."""

    name: str
    type: str
    default: Any

    def __str__(self) -> str:
        return f"{self.name}: {self.type} = {_show(self.default)}"


class ProblemInfo(NamedTuple):
    """What ``list_problems`` reports for one registered problem."""

    name: str
    params: tuple[Param, ...]
    description: str


class _Mismatch(Exception):
    """A value does not fit a type hint (internal; becomes a SpecError with context)."""


def check(ok: bool, arg: str, value: Any, valid: str) -> None:
    """Raise a SpecError saying ``arg=value`` is out of range unless ``ok``; ``valid`` is the range.

    >>> check(False, "flip", 0.7, "0 <= flip < 0.5")
    Traceback (most recent call last):
    optimorph.spec.SpecError: flip=0.7 is out of range: valid is 0 <= flip < 0.5
    """
    if not ok:
        raise SpecError(f"{arg}={_show(value)} is out of range: valid is {valid}")


def registered(name: str, *, shown: tuple[str, ...] = (), validation: bool = False) -> Callable:
    """Decorate a problem factory: validate its arguments and name the Problem it returns.

    Args:
      name: the spec name, e.g. ``"two-moons"``.
      shown: arguments always written in the canonical name (others only when not default).
      validation: the problem has a training set to hold a validation split out of: the factory
        takes one more argument, ``validation: float = 0.0``, the fraction of the training set
        moved to an evaluation set ``"validation"`` (:func:`~optimorph.problems.base.hold_out`,
        drawn from the factory's ``seed``). 0, the default, leaves the problem as it was.

    Returns:
      A decorator; the decorated factory takes keyword arguments only and has an ``info``
      attribute (:class:`ProblemInfo`).
    """

    def decorate(fn: Callable[..., Problem]) -> Callable[..., Problem]:
        hints = typing.get_type_hints(fn)
        params = tuple(
            Param(p.name, _type_name(hints[p.name]), p.default)
            for p in inspect.signature(fn).parameters.values()
        )
        if validation:
            hints = {**hints, VALIDATION: float}
            params += (Param(VALIDATION, "float", 0.0),)
        description = (fn.__doc__ or "").strip().splitlines()[0]
        valid = ", ".join(str(p) for p in params)

        @functools.wraps(fn)
        def factory(**kwargs: Any) -> Problem:
            unknown = sorted(set(kwargs) - {p.name for p in params})
            if unknown:
                raise SpecError(
                    f"{name} has no argument {', '.join(unknown)}; valid arguments: {valid}"
                )
            values = {p.name: p.default for p in params}
            for key, value in kwargs.items():
                try:
                    values[key] = _coerce(value, hints[key])
                except _Mismatch:
                    raise SpecError(
                        f"{name}: {key} must be {_type_name(hints[key])}, got {_show(value)} "
                        f"({type(value).__name__}); valid arguments: {valid}"
                    ) from None
            held_out = values.pop(VALIDATION) if validation else 0.0
            try:
                check(0 <= held_out < 1, VALIDATION, held_out, "0 <= validation < 1")
                problem = fn(**values)
            except SpecError as err:
                raise SpecError(f"{name}: {err}") from None
            if held_out:
                try:
                    problem = hold_out(problem, held_out, seed=values.get("seed", 0))
                except ValueError as err:  # too few training examples
                    raise SpecError(f"{name}: {err}") from None
            if validation:
                values[VALIDATION] = held_out
            return dataclasses.replace(problem, name=_canonical(name, params, values, shown))

        factory.info = ProblemInfo(name, params, description)
        return factory

    return decorate


def _canonical(name: str, params: tuple[Param, ...], values: dict, shown: tuple[str, ...]) -> str:
    kwargs = {
        p.name: list(values[p.name]) if isinstance(values[p.name], tuple) else values[p.name]
        for p in params
        if p.name in shown or values[p.name] != p.default
    }
    return str(Call(name, (), kwargs))


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"list[{_type_name(typing.get_args(hint)[0])}]"
    return "None" if hint is type(None) else hint.__name__


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint``'s type, or _Mismatch (bools are never numbers here)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint) and isinstance(value, str):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
            except _Mismatch:
                pass
    elif origin is tuple:  # tuple[T, ...]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, typing.get_args(hint)[0]) for v in value)
    elif hint is type(None):
        if value is None:
            return None
    elif isinstance(value, bool):
        if hint is bool:
            return value
    elif hint is int:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)):
            return float(value)
    elif isinstance(value, hint):
        return value
    raise _Mismatch
