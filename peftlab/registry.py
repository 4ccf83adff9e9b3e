"""Registries: each kind of pluggable thing (method, task, metric, deployment mode, similarity
measure) is registered once, by name, and everything else asks the registry.

    METHODS = Registry("method type")
    @METHODS.register
    class Lora(Method): name = "lora"
    METHODS.get("lora", where="spec.yaml: methods.lora.type")

The spec validates its names against the registries, the planner asks them what to plan, the
stats stage which comparisons exist, the report how to label them; adding a method, mode or
measure is one file and one registration, with no list of names to edit anywhere else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from peftlab.errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> registered objects of one kind, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, obj: Any = None, *, replace: bool = False) -> Any:
        """Register an object (or a class, which is instantiated) under its `name` attribute.

        Usable as a decorator; returns what it was given. A second registration of a name is
        an error unless `replace`.
        """
        item = obj() if isinstance(obj, type) else obj
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty string `name`, got {name!r}")
        if name in self._items and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    @contextlib.contextmanager
    def temporarily(self, obj: Any) -> Iterator[Any]:
        """Register `obj` for the duration of a block (tests, plug-ins tried out)."""
        self.register(obj)
        item = obj() if isinstance(obj, type) else obj
        try:
            yield self._items[item.name]
        finally:
            self.unregister(item.name)

    def get(self, name: Any, *, where: str | None = None) -> T:
        if not isinstance(name, str) or name not in self._items:
            prefix = f"{where}: " if where else ""
            raise SpecError(f"{prefix}unknown {self.kind} {name!r}; expected one of "
                            f"{sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)
