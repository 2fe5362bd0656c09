"""Error types and message helpers shared across regzoo."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["PluginError", "RegzooError", "unknown_name_message"]


class RegzooError(Exception):
    """Base class of regzoo's own errors (shown to CLI users without a traceback)."""


class PluginError(RegzooError, ImportError):
    """A plugin (entry point, module or file) failed to load."""


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """Build ``"unknown <kind> 'name'; did you mean ...? Available: ..."``."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} '{name}'{hint} Available: {', '.join(known) or '(none)'}"
