"""Error types and message helpers shared across regzoo.

Every error a user can cause (a bad file, value, name or option) is a
[`RegzooError`][regzoo._errors.RegzooError]; the CLI prints those as one line (exit code 2) and lets
anything else, an internal bug, show its traceback. Each subclass also derives from the built-in
exception it refines, so ``except ValueError`` keeps working for API users.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "InputError",
    "MissingFileError",
    "OutputExistsError",
    "PluginError",
    "RegzooError",
    "UnknownNameError",
    "checkpoint_read_reason",
    "unknown_name_message",
]


class RegzooError(Exception):
    """Base class of regzoo's own errors (shown to CLI users without a traceback)."""


class InputError(RegzooError, ValueError):
    """An invalid value, file content, shape or grid given by the user."""


class UnknownNameError(RegzooError, KeyError):
    """An unknown, ambiguous or fixed name (parameter, regularizer, metric...)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingFileError(RegzooError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(RegzooError, FileExistsError):
    """An output that would be overwritten without the user asking for it."""


class PluginError(RegzooError, ImportError):
    """A plugin (entry point, module or file) failed to load."""


def unknown_name_message(kind: str, name: str, known: Iterable[str]) -> str:
    """Build ``"unknown <kind> 'name'; did you mean ...? Available: ..."`` (without a close
    match: ``"unknown <kind> 'name'. Available: ..."``)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    return f"unknown {kind} '{name}'{hint} Available: {', '.join(known) or '(none)'}"


def checkpoint_read_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` could not read a file, in a few words: never
    torch's advice to retry with ``weights_only=False`` (which would run any code the file
    holds)."""
    text = str(exc).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return (
            "not a PyTorch checkpoint, or one holding objects other than weights, which regzoo "
            "never unpickles"
        )
    first = (text.splitlines() or [""])[0][:200]
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, (EOFError, KeyError)) or type(exc).__name__ == "UnpicklingError":
        return f"not a PyTorch checkpoint file ({reason})"  # text, an image, a truncated file
    return reason
