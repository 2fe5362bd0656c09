"""Pretrained models shipped with regzoo, loaded by name.

Each model is a weights-only checkpoint ``regzoo/pretrained/<name>.pt`` (the network's weights
and regzoo's extras: config, free parameters, fingerprint; no optimizer state) with a card
``<name>.json``: the config it was trained with, the data set, the steps, the figures measured
with it and the command that retrains it. [`regzoo.checkpoint.pretrained`][regzoo.checkpoint.pretrained] loads one;
[`resolve_model`][regzoo.pretrained_models.resolve_model] lets every ``--model`` of the command line take a name where a checkpoint
path is expected (a path that exists always wins).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from regzoo._errors import UnknownNameError, unknown_name_message

__all__ = [
    "PRETRAINED_DIR",
    "available_pretrained",
    "pretrained_card",
    "resolve_model",
    "unknown_pretrained",
]

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
"""Where the shipped models and their cards are (package data)."""


def available_pretrained() -> list[str]:
    """Names of the shipped models (each has a card and a checkpoint)."""
    return sorted(
        card.stem for card in PRETRAINED_DIR.glob("*.json") if card.with_suffix(".pt").is_file()
    )


def unknown_pretrained(name: str) -> UnknownNameError:
    """The error for a name that is not a shipped model (it lists the available ones)."""
    return UnknownNameError(unknown_name_message("pretrained model", name, available_pretrained()))


def pretrained_card(name: str) -> dict[str, Any]:
    """The card of the shipped model ``name``: its config, data set, steps, figures and the
    command that retrains it.

    Raises:
        UnknownNameError: no such model (the message lists the available ones).
    """
    if name not in available_pretrained():
        raise unknown_pretrained(name)
    card: dict[str, Any] = json.loads((PRETRAINED_DIR / f"{name}.json").read_text())
    return card


def resolve_model(model: str | Path) -> Path:
    """The checkpoint ``model`` names: an existing file as given, else a shipped model's name.

    A text that looks like a path (a folder separator or a suffix such as ``.ckpt``) and does
    not exist is returned as given, so that loading it says the file is missing.

    Raises:
        UnknownNameError: a bare name that is neither a file nor a shipped model (the message
            lists the available ones).
    """
    path = Path(model)
    if path.exists() or isinstance(model, Path):
        return path
    text = str(model)
    if "/" in text or "\\" in text or path.suffix:
        return path
    if text not in available_pretrained():
        raise UnknownNameError(
            unknown_name_message("pretrained model", text, available_pretrained())
            + " (or give a checkpoint file's path)"
        )
    return PRETRAINED_DIR / f"{text}.pt"
