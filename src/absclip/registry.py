"""A tiny name -> factory registry, the one way every pluggable piece is created."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; ``create(name, **kwargs)`` builds one.

    Args:
        kind: what the registry holds ("method", "backbone", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, **kwargs: object) -> T:
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._factories
