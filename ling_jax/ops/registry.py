"""A name → function table that backends file themselves in (`@table.register("name")`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Functions by name; `get` of an unknown name is a ValueError listing the choices."""

    def __init__(self, kind: str):
        self.kind = kind  # "attention backend", "MoE backend": names the table in errors
        self._table: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: file `fn` under `name`."""
        def wrap(fn: F) -> F:
            self._table[name] = fn
            return fn

        return wrap

    def names(self) -> list[str]:
        """The names registered so far, sorted."""
        return sorted(self._table)

    def get(self, name: str) -> F:
        """The function registered under `name`."""
        if name not in self._table:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._table[name]
