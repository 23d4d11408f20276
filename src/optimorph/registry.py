"""One registry mechanism: named entries, registered once, looked up with errors that help.

>>> shapes = Registry("shape")
>>> @shapes.register("square")
... def square(side: float = 1.0) -> float:
...     return side * side
>>> shapes.get("square")(2.0), shapes.names()
(4.0, ['square'])
>>> shapes.get("circle")
Traceback (most recent call last):
optimorph.spec.SpecError: unknown shape 'circle'; registered: square
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from optimorph.spec import SpecError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
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

    def get(self, name: str) -> T:
        """The entry, or a SpecError listing the registered names."""
        if name not in self._entries:
            raise SpecError(
                f"unknown {self.what} {name!r}; registered: {', '.join(self.names()) or 'none'}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return (self._entries[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._entries)
