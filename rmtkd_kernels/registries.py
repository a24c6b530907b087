"""Named registries: backends, site kinds, model adapters and command-line tasks are each one of these.

Entries keep their registration order (it decides ties and the order of automatic choice); registering a name
again replaces its entry; a lookup of an unknown name is a ValueError that names the argument and what is known.
``scoped()`` undoes every registration made inside it (tests and plug-ins tried for one run).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name. ``what`` names the kind in errors ("backend"), ``argument`` the argument a
    wrong name came from ("backend", "kind", "adapter")."""

    def __init__(self, what: str, argument: str) -> None:
        self.what, self.argument = what, argument
        self._entries: dict[str, T] = {}
        self._listeners: list[Callable[[], None]] = []

    def add(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        self._changed()
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The message for a name nothing is registered under."""
        return f"{self.argument}: unknown {self.what} {name!r}; this rmtkd knows {sorted(self._entries)}"

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> tuple[T, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the entries change (a memo built on them is then stale)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry[T]"]:
        """Every registration made inside the block is undone when it ends."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries = saved
            self._changed()
