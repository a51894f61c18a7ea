"""The one place where backbones (token mixers) and task families are looked up by name.

A mixer or task registers itself with a decorator in its own file; every module of the
registry's package is imported on first lookup, so adding a fourth backbone is one new file
in `lra/models/attention/` plus one `conf/model/*.yaml`, and nothing else. A model config can
instead name a whole network in ARCHITECTURES (`model.architecture`, default `encoder`: the
shared encoder with the model's mixer), for a published model that is not a mixer.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

_REGISTRIES: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """This process's registry of `kind` (how a pickled registry is unpickled)."""
    return _REGISTRIES[kind]


class Registry:
    """Name -> class, filled by `@REGISTRY.register("name")` in the modules of `package`."""

    def __init__(self, kind: str, package: str, commands: tuple[str, ...] = ()) -> None:
        if kind in _REGISTRIES:
            raise ValueError(f"a {kind} registry exists already: lra.registry has one per kind")
        self.kind = kind
        self.package = package
        self.commands = commands  # modules of the package that are commands: never imported
        self._entries: dict[str, Any] = {}
        self._loaded = False
        _REGISTRIES[kind] = self

    def __reduce__(self) -> tuple[Callable[[str], Registry], tuple[str]]:
        """Pickled by name: a copy sent to another process (Hydra's launchers pickle the config's
        resolvers into every job) is that process's own registry, which its imports fill, not
        an empty copy of this one."""
        return registry, (self.kind,)

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name in self.commands:
                continue
            importlib.import_module(f"{self.package}.{info.name}")
        self._loaded = True

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}. "
                f"A new one is a file in {self.package.replace('.', '/')}/ that uses "
                f"@{self.kind.upper().replace(' ', '_')}S.register('{name}')"
            )
        return self._entries[name]


MIXERS = Registry("mixer", "lra.models.attention")
TASKS = Registry("task", "lra.data", commands=("prepare",))
ARCHITECTURES = Registry("architecture", "lra.models")
