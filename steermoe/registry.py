"""A small generic registry: name -> object, with lazy entries given as dotted paths.

Registering a name twice is an error; an unknown name lists the available ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from steermoe.errors import InputError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None):
        """Register ``obj`` (or a ``"module:attr"`` path, imported on first use) under ``name``.

        Used bare it is a decorator: ``@registry.register("name")``.
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if obj is not None:
            self._entries[name] = obj
            return obj

        def decorator(fn: T) -> T:
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> T:
        try:
            entry = self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise InputError(f"unknown {self.kind} {name!r}; available: {known}") from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


Factory = Callable[..., object]
