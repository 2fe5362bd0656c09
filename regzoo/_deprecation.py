"""Old module paths kept working: a shim module warns once and forwards to the new module.

``regzoo.refine``, ``regzoo.sweep`` and ``regzoo.train`` are functions of the package; their
old modules (``regzoo.refine`` and so on, now [`regzoo.refinement`][regzoo.refinement],
[`regzoo.sweeping`][regzoo.sweeping], [`regzoo.training`][regzoo.training]) stay importable, and
importing one leaves the package's function in place (see ``regzoo._Package``).
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any, cast


class _Shim(types.ModuleType):
    """A deprecated module: its attributes come from its new modules."""

    _targets: tuple[str, ...]

    def __getattr__(self, name: str) -> Any:
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self._targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


def deprecated_module(name: str, *targets: str) -> None:
    """Turn the module ``name`` (being imported) into a shim of ``targets``, with a warning."""
    warnings.warn(
        f"{name} is deprecated: import from {' or '.join(targets)}",
        DeprecationWarning,
        stacklevel=3,
    )
    module = sys.modules[name]
    module.__class__ = _Shim
    cast(_Shim, module)._targets = targets
