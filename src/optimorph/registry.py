"""One registry mechanism: named entries, registered once, looked up with errors that help.

Optimizers, problems, schedules, recipes, norms and orthogonalizers each keep one
:class:`Registry`. It is a read-only mapping (name -> entry, in registration order);
:meth:`Registry.lookup` is the lookup that fails with the valid names.

>>> shapes = Registry("shape")
>>> @shapes.register("square")
... def square(side: float = 1.0) -> float:
...     return side * side
>>> shapes.lookup("square")(2.0), list(shapes)
(4.0, ['square'])
>>> shapes.lookup("circle")
Traceback (most recent call last):
optimorph.spec.SpecError: unknown shape 'circle'; registered: square
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from optimorph.spec import SpecError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Entries by name. ``what`` names the kind in messages ("optimizer", "recipe", ...)."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a second registration of a name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def lookup(self, name: str) -> T:
        """The entry, or a SpecError listing the registered names."""
        if name not in self._entries:
            raise SpecError(
                f"unknown {self.what} {name!r}; registered: {', '.join(self) or 'none'}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
