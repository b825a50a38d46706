"""Name -> class registries (planners, trainers) that users extend without editing the package.

A name is looked up among the built-in classes, then among the entry points of the registry's
group (a package declares e.g. `entry_points={"sdmcunet.trainers": ["MyTrainer = mypkg.mod:MyTrainer"]}`),
and finally read as an import path `package.module:ClassName`.
"""

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from sdmcunet.utils.errors import SDMCError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtin: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register `cls` under its class name."""
        self._builtin[cls.__name__] = cls
        return cls

    def names(self) -> list[str]:
        return sorted({*self._builtin, *(entry.name for entry in entry_points(group=self.entry_point_group))})

    def get(self, name: str) -> type[T]:
        if name in self._builtin:
            return self._builtin[name]
        for entry in entry_points(group=self.entry_point_group):
            if entry.name == name:
                return entry.load()
        if ":" in name:
            return self._import(name)
        raise SDMCError(
            f"unknown {self.kind} {name!r}; available: {', '.join(self.names())} "
            f"(or give your own as package.module:ClassName, or declare a '{self.entry_point_group}' entry point)"
        )

    def _import(self, path: str) -> type[T]:
        module_name, _, class_name = path.partition(":")
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise SDMCError(f"cannot load {self.kind} {path!r}: {error}") from None
