"""Name -> component tables: duplicate names refused, unknown names answered with the known ones."""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import DuplicateNameError, PluginError, UnknownNameError
from .layout import PLAIN_NAME

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, item: T, plugin: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"Plugin '{plugin}' registered a {self.kind} without a name (got {name!r:.60}).")
        if not PLAIN_NAME.fullmatch(name):  # it names folders in the work directory: nothing outside it
            raise PluginError(
                f"Plugin '{plugin}' registered a {self.kind} named {name!r:.60}: a name is letters, digits, '.', "
                "'_' and '-', starting with a letter or digit."
            )
        if name in self._items:
            raise DuplicateNameError(
                f"{self.kind.capitalize()} '{name}' is registered by both plugin '{self._owners[name]}' and "
                f"plugin '{plugin}'. Uninstall one of them, or choose plugins with LLAMAREC_PLUGINS."
            )
        self._items[name] = item
        self._owners[name] = plugin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._items)) from None

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(n for n, owner in self._owners.items() if owner == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._items
