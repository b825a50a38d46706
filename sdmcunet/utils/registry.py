"""Name -> class registries (planners, trainers) that users extend without editing the package.

A name is looked up among the built-in classes, then among the entry points of the registry's
group (a package declares e.g. `entry_points={"sdmcunet.trainers": ["MyTrainer = mypkg.mod:MyTrainer"]}`),
and finally, when a user gives it on the command line, read as an import path `package.module:ClassName`.
A name read from a file (a checkpoint's trainer) is never imported by path: importing runs the
module's code. Whatever is found must be a subclass of the registry's base class.
"""

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from sdmcunet.utils.errors import SDMCError

T = TypeVar("T")


class Registry(Generic[T]):
    """`kind` names what it holds in messages; every class it hands out is a subclass of `base`."""

    def __init__(self, kind: str, entry_point_group: str, base: type):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.base = base
        self._builtin: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: register `cls` under its class name."""
        self._builtin[cls.__name__] = cls
        return cls

    def names(self) -> list[str]:
        return sorted({*self._builtin, *(entry.name for entry in entry_points(group=self.entry_point_group))})

    def get(self, name: str) -> type[T]:
        """The class `name`: built in, an entry point, or an import path given by the user (a command-line
        option; never a string read from a file, which `get_registered` is for)."""
        if ":" in name and name not in self._builtin:
            return self._checked(name, self._import(name))
        return self.get_registered(name)

    def get_registered(self, name: str) -> type[T]:
        """The built-in or entry-point class `name`; nothing is imported by path."""
        if name in self._builtin:
            return self._builtin[name]
        for entry in entry_points(group=self.entry_point_group):
            if entry.name == name:
                return self._checked(name, entry.load())
        raise SDMCError(
            f"unknown {self.kind} {name!r}; available: {', '.join(self.names())} "
            f"(or give your own as package.module:ClassName, or declare a '{self.entry_point_group}' entry point)"
        )

    def _checked(self, name: str, found: object) -> type[T]:
        if not (isinstance(found, type) and issubclass(found, self.base)):
            raise SDMCError(f"{name!r} is not a {self.kind}: {found!r} is not a subclass of {self.base.__name__}")
        return found

    def _import(self, path: str) -> object:
        module_name, _, class_name = path.partition(":")
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise SDMCError(f"cannot load {self.kind} {path!r}: {error}") from None
