"""Name -> class registries with plugin discovery.

A [`Registry`][regzoo.registry.Registry] maps names to classes. Built-ins register with a decorator;
third-party packages register through an entry-point group (``regzoo.regularizers``,
``regzoo.similarities``) and are discovered lazily the first time a registry is queried; a
config may also name plugin modules or ``.py`` files to import
([`load_plugin`][regzoo.registry.load_plugin]).

A plugin that fails to load is recorded with its error and never hides the built-ins: asking
for a name it was meant to provide raises [`PluginError`][regzoo._errors.PluginError] naming the
plugin and the original error.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict

from regzoo._errors import (
    InputError,
    MissingFileError,
    PluginError,
    UnknownNameError,
    unknown_name_message,
)

__all__ = ["NoOptions", "PluginOrigin", "Registry", "load_plugin", "load_plugins"]

T = TypeVar("T")


class PluginOrigin(NamedTuple):
    """The installed distribution that provides a plugin (recorded in checkpoints)."""

    distribution: str
    version: str


class NoOptions(BaseModel):
    """Options model of a component that takes no options (the default ``Options`` of
    regularizers and similarities)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Registry(Generic[T]):
    """A named collection of classes that share a contract.

    Args:
        kind: what the registry holds, used in messages (e.g. ``"regularizer"``).
        group: entry-point group scanned for third-party registrations; each entry point
            names a class (``name = package.module:Class``). One name per class: a class
            decorated with ``@regularizer("x")`` (or ``@similarity``...) registers as ``x``
            and its entry point must be named ``x`` too; an undecorated class registers under
            the entry point's name. An entry point named like a built-in is not loaded: one
            warning and a [`failed`][regzoo.registry.Registry.failed] entry (the built-in stays).
        contract: the contract registered objects must satisfy, stated for documentation and
            checked by ``check`` at registration.
        check: optional callable validating a class at registration (raise to reject).

    Registering a name twice is an error (never a silent overwrite).
    """

    def __init__(
        self,
        kind: str,
        group: str,
        *,
        contract: str = "",
        check: Callable[[type[T]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self.contract = contract
        self._check = check
        self._items: dict[str, type[T]] = {}
        self._failed: dict[str, str] = {}
        self._origins: dict[str, PluginOrigin] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Decorator registering a class under ``name``.

        Raises:
            ValueError: if ``name`` is already registered to a different class.
        """

        def decorator(cls: type[T]) -> type[T]:
            self.add(name, cls)
            return cls

        return decorator

    def add(self, name: str, cls: type[T]) -> None:
        """Register ``cls`` under ``name`` (see [`register`][regzoo.registry.Registry.register])."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"{self.kind} name must be a non-empty identifier, got {name!r}")
        existing = self._items.get(name)
        if existing is not None and existing is not cls:
            same_origin = (existing.__module__, existing.__qualname__) == (
                cls.__module__,
                cls.__qualname__,
            )
            if not same_origin:
                raise InputError(
                    f"{self.kind} '{name}' is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}"
                )
        if self._check is not None:
            self._check(cls)
        cls.registered_name = name  # type: ignore[attr-defined]
        self._items[name] = cls

    def get(self, name: str) -> type[T]:
        """Return the class registered as ``name``.

        Raises:
            PluginError: if the plugin meant to provide ``name`` failed to load.
            KeyError: if no such name is registered (close matches are named).
        """
        self.discover()
        if name in self._items:
            return self._items[name]
        if name in self._failed:
            raise PluginError(self._failed[name])
        raise UnknownNameError(unknown_name_message(self.kind, name, self._items))

    def available(self) -> list[str]:
        """Sorted names of everything registered (built-ins and discovered plugins)."""
        self.discover()
        return sorted(self._items)

    @property
    def failed(self) -> dict[str, str]:
        """Plugins that failed to load: entry-point name -> error message."""
        self.discover()
        return dict(self._failed)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def discover(self, *, refresh: bool = False) -> None:
        """Import every entry point of the registry's group (once, unless ``refresh``)."""
        if self._discovered and not refresh:
            return
        self._discovered = True
        for entry_point in importlib.metadata.entry_points(group=self.group):
            name = entry_point.name
            existing = self._items.get(name)
            if existing is not None and existing.__module__.split(".")[0] == "regzoo":
                self._fail(
                    name,
                    f"{self.kind} plugin '{name}' ({entry_point.value}) was not loaded: "
                    f"'{name}' is a built-in {self.kind}; give the entry point (and the "
                    f"class's @{self.kind} name) another name",
                )
                continue
            if existing is not None and not refresh:
                continue
            try:
                obj = entry_point.load()
                self._register_entry_point(name, obj)
            except Exception as exc:  # a broken plugin must not break discovery
                self._fail(
                    name,
                    f"{self.kind} plugin '{name}' ({entry_point.value}) failed to "
                    f"load: {type(exc).__name__}: {exc}",
                )
            else:
                self._failed.pop(name, None)
                dist = entry_point.dist
                if dist is not None and isinstance(obj, type):
                    self._origins[getattr(obj, "registered_name", name)] = PluginOrigin(
                        dist.name, dist.version
                    )

    def _register_entry_point(self, name: str, obj: object) -> None:
        """Register what an entry point names, under ONE name: the class's own ``@``-decorator
        name when it has one (the entry point's name must then be the same), else the entry
        point's name."""
        if not isinstance(obj, type):
            raise InputError(f"the entry point names {obj!r}, not a class")
        decorated = getattr(obj, "registered_name", None)
        if decorated is None:
            self.add(name, obj)
        elif decorated != name:
            raise InputError(
                f"{obj.__module__}.{obj.__qualname__} registers itself as '{decorated}'; "
                f"name the entry point '{decorated}' too (one name per {self.kind})"
            )

    def _fail(self, name: str, message: str) -> None:
        self._failed[name] = message
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def origin(self, name: str) -> PluginOrigin | None:
        """The installed distribution that provides ``name`` (``None``: a built-in, or a plugin
        loaded from a file or module that no distribution owns).

        Checkpoints record it, so a model whose plugin is missing names the package to install.
        """
        self.discover()
        cls = self._items.get(name)
        if cls is None or cls.__module__.split(".")[0] == "regzoo":
            return None
        if name in self._origins:
            return self._origins[name]
        top = cls.__module__.split(".")[0]
        dists = importlib.metadata.packages_distributions().get(top, [])
        if not dists:
            return None
        return PluginOrigin(dists[0], importlib.metadata.version(dists[0]))


def load_plugin(spec: str) -> None:
    """Import a plugin named in a config: a module name or a path to a ``.py`` file.

    Importing the plugin runs its ``@regularizer``/``@similarity`` decorators.

    Raises:
        PluginError: naming the plugin, if the file is missing or the import fails.
    """
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise MissingFileError(f"no such file: {path}")
            resolved = path.resolve()
            digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
            module_name = f"regzoo_plugin_{resolved.stem}_{digest}"
            if module_name in sys.modules:
                return
            module_spec = importlib.util.spec_from_file_location(module_name, resolved)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot import {path} as a module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
        else:
            importlib.import_module(spec)
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not end the CLI
        raise PluginError(f"plugin '{spec}' failed to load: {type(exc).__name__}: {exc}") from exc


def load_plugins(specs: Iterable[str]) -> None:
    """Load each plugin of ``specs`` in order (see [`load_plugin`][regzoo.registry.load_plugin])."""
    for spec in specs:
        load_plugin(spec)
