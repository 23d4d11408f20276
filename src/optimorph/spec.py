"""Spec strings: ``"adam(lr=1e-3, b2=0.999)"``, ``"two-moons(n=500)"``, ``"pkg.mod:factory(k=1)"``.

A spec is parsed with Python's ``ast`` as a single call expression whose arguments are literals
(numbers, strings, booleans, None, lists, tuples) or nested calls (``lr=power_law(0.1, tau=5e4)``).
Nothing is evaluated or imported while parsing: it is safe on untrusted text.

User factories (``pkg.mod:factory(...)``) are the one exception, and they are off by default:
building one imports ``pkg.mod`` (running its top-level code) and calls ``factory`` with the
spec's arguments. Turn them on with ``--allow-import`` on the command line, with
:func:`allow_imports` in Python, or with ``OPTIMORPH_ALLOW_IMPORT=1``; only do so for specs you
wrote or trust.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
from typing import Any

__all__ = ["Call", "SpecError", "parse", "is_import_path", "load_import_path", "allow_imports"]

_IMPORTS = {"allowed": os.environ.get("OPTIMORPH_ALLOW_IMPORT", "") in ("1", "true", "yes")}
# optimorph's own dependencies: ``optax:adam(1e-3)`` calls an optax factory without opt-in (the
# module is imported already and its factories only build transformations).
TRUSTED_MODULES = ("optax",)


def allow_imports(enabled: bool = True) -> bool:
    """Allow (or forbid again) ``pkg.mod:factory`` specs; returns the previous setting."""
    previous = _IMPORTS["allowed"]
    _IMPORTS["allowed"] = bool(enabled)
    return previous


class SpecError(ValueError):
    """A spec string or its arguments are malformed; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Call:
    """A parsed ``name(*args, **kwargs)``; ``name`` may be ``pkg.mod:attr`` (a user factory)."""

    name: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        parts = [_format(a) for a in self.args]
        parts += [f"{k}={_format(v)}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def _format(value: Any) -> str:
    if isinstance(value, Call):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_format(v) for v in value)
        return (
            f"[{inner}]"
            if isinstance(value, list)
            else f"({inner}{',' if len(value) == 1 else ''})"
        )
    return repr(value)


# Names may contain '-' (two-moons) and a user factory 'pkg.mod:attr'; both are not Python
# identifiers, so they are swapped for placeholders before ast parsing.
_NAME = re.compile(r"^\s*([A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.]*)?)\s*(\(.*\))?\s*$", re.S)


def parse(text: str | Call) -> Call:
    """Parse a spec string into a :class:`Call`.

    >>> parse("adam(lr=1e-3, b1=0.9)")
    Call(name='adam', args=(), kwargs={'lr': 0.001, 'b1': 0.9})
    """
    if isinstance(text, Call):
        return text
    if not isinstance(text, str):
        raise SpecError(f"a spec must be a string like 'adam(lr=1e-3)', got {type(text).__name__}")
    match = _NAME.match(text)
    if not match:
        raise SpecError(
            f"cannot parse spec {text!r}: expected 'name' or 'name(key=value, ...)', "
            "e.g. 'adam(lr=1e-3, b2=0.999)' or 'mypkg.opts:my_optimizer(lr=0.1)'"
        )
    name, arglist = match.group(1), match.group(2) or "()"
    try:
        tree = ast.parse("_f" + arglist, mode="eval")
    except SyntaxError as err:
        raise SpecError(f"cannot parse the arguments of {text!r}: {err.msg}") from None
    call = tree.body
    # One call of the name only: 'sgd(lr=0.01)(lr=50)' parses as a call of a call.
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise SpecError(
            f"cannot parse spec {text!r}: expected one name(key=value, ...), e.g. 'sgd(lr=0.01)'"
        )
    return Call(name, *_arguments(call, text))


def _arguments(call: ast.Call, text: str) -> tuple[tuple, dict]:
    args = tuple(_literal(a, text) for a in call.args)
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise SpecError(f"'**' is not allowed in spec {text!r}")
        if kw.arg in kwargs:
            raise SpecError(f"{kw.arg} is given twice in spec {text!r}; give it once")
        kwargs[kw.arg] = _literal(kw.value, text)
    return args, kwargs


def _literal(node: ast.AST, text: str) -> Any:
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise SpecError(f"nested calls must be plain names in {text!r}")
        return Call(node.func.id, *_arguments(node, text))
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e, text) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Name) and node.id in ("true", "false", "inf", "nan"):
        return {"true": True, "false": False, "inf": float("inf"), "nan": float("nan")}[node.id]
    if isinstance(node, ast.Name):
        return node.id  # bare words read as strings: activation=relu
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise SpecError(
            f"only literal values are allowed in spec {text!r} (numbers, strings, true/false, "
            f"lists); got {ast.unparse(node)!r}"
        ) from None


def is_import_path(name: str) -> bool:
    """True for ``package.module:attribute`` names that point at a user's factory."""
    return ":" in name


def load_import_path(name: str) -> Any:
    """Import ``package.module:attribute`` and return the attribute, with a clear error.

    Refused unless imports were allowed (see the module docstring).
    """
    module_name, _, attr = name.partition(":")
    if not _IMPORTS["allowed"] and module_name.split(".")[0] not in TRUSTED_MODULES:
        raise SpecError(
            f"{name!r} would import module {module_name!r} and call {attr!r}: user factories are "
            "off by default. Pass --allow-import (command line), call "
            "optimorph.spec.allow_imports() (Python) or set OPTIMORPH_ALLOW_IMPORT=1 to allow it"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(
            f"cannot import module {module_name!r} named in {name!r} ({err}); "
            "is it installed or on PYTHONPATH?"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"module {module_name!r} has no attribute {attr!r} (from {name!r})")
        obj = getattr(obj, part)
    return obj
