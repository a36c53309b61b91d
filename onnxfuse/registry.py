"""Registry[T]: named extensions (op rules, importances, methods, repairs, training methods).

Each extension point keeps one Registry and offers one decorator that adds to it; the CLI takes its
choices from `names()`. Registering a name twice is an error unless `replace=True` says it is meant.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import OnnxfuseError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, replace: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override it)")
        self._entries[name] = entry
        return entry

    def register(self, name: str, replace: bool = False):
        """Decorator form of `add`: `@REGISTRY.register("name")`."""
        def wrap(entry: T) -> T:
            self.add(name, entry, replace)
            return entry
        return wrap

    def get(self, name: str) -> T:
        """The entry, or a user error naming the choices."""
        if name not in self._entries:
            raise OnnxfuseError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        return self._entries[name]

    def find(self, name: str) -> T | None:
        return self._entries.get(name)

    def remove(self, name: str) -> T:
        return self._entries.pop(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
