"""Name -> builder registries that fail loudly.

An explicit table instead of the reference's ``getattr(module, name)``: a typo names the valid
choices, and registering a name twice is an error rather than a silent override.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from openslip.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the valid choices (a user error)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A case-insensitive mapping from names (and aliases) to builders."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, item: T | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T] | T:
        """Register ``item`` under ``name``; usable as ``reg.register("x", fn)`` or as a decorator."""

        def add(obj: T) -> T:
            key = name.lower()
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = obj
            for alias in aliases:
                akey = alias.lower()
                if akey in self._items or akey in self._aliases:
                    raise ValueError(f"{self.kind} alias {alias!r} is already registered")
                self._aliases[akey] = key
            return obj

        return add if item is None else add(item)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases."""
        key = name.lower()
        key = self._aliases.get(key, key)
        if key not in self._items:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return key

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return key in self._items or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
