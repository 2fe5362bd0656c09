"""Option values checked finite and bounded before any work, each refusal one line naming the
option: similarity options read from text (``ngf:eta=1e999`` is infinite, 50,000 nested
brackets are not a value), and windows or radii that must fit the image they look at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from regzoo._errors import InputError

__all__ = [
    "MAX_OPTION_DEPTH",
    "MAX_OPTION_LENGTH",
    "check_finite",
    "check_fits_image",
    "check_option_text",
    "option_value",
]

MAX_OPTION_DEPTH = 8
"""Deepest nesting of brackets an option value may have (``[[1, 2], [3, 4]]`` is 2)."""

MAX_OPTION_LENGTH = 10_000
"""Longest text (characters) an option or a similarity specification may have."""


def _depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def check_finite(value: Any, what: str) -> Any:
    """Check that every number in ``value`` (a number, or lists and dicts of them) is finite.

    Returns:
        ``value`` unchanged.

    Raises:
        InputError: a NaN or infinite number (``1e999`` reads as infinite), naming ``what``.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InputError(f"{what} must be a finite number, got {value}")
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{what}.{key}")
        return value
    if isinstance(value, list | tuple):
        for item in value:
            check_finite(item, what)
        return value
    return value


def check_option_text(text: str, what: str) -> str:
    """Check that an option's text is at most `MAX_OPTION_LENGTH` characters long and
    nests brackets at most `MAX_OPTION_DEPTH` deep (before anything parses it).

    Raises:
        InputError: naming ``what`` and the length or depth.
    """
    if len(text) > MAX_OPTION_LENGTH:
        raise InputError(
            f"{what}: the text is {len(text)} characters long (at most {MAX_OPTION_LENGTH})"
        )
    depth = _depth(text)
    if depth > MAX_OPTION_DEPTH:
        raise InputError(f"{what}: the text nests brackets {depth} deep (at most "
                         f"{MAX_OPTION_DEPTH})")  # fmt: skip
    return text


def option_value(text: str, what: str) -> Any:
    """The value of a ``KEY=VALUE`` option: read as JSON (numbers, lists in brackets), else the
    text itself; checked finite and at most `MAX_OPTION_DEPTH` brackets deep.

    Args:
        text: the value's text.
        what: the option's name for messages (``similarity 'ngf:eta=1e999': eta``).

    Raises:
        InputError: a value nested too deeply, too long, or a NaN or infinite number.
    """
    check_option_text(text, what)

    def refuse(constant: str) -> Any:
        raise InputError(f"{what} must be a finite number, got {constant}")

    try:
        value = json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError:
        return text.strip()
    return check_finite(value, what)


def check_fits_image(similarity: Any, shape: Sequence[int], what: str = "similarity") -> None:
    """Check that a similarity's window (``2 radius + 1`` voxels, its declared
    [`radius`][regzoo.similarity.base.Similarity.radius]) is no larger than the image it compares.

    A window wider than every side of the image sees the whole image from every voxel: the
    loss is flat, or the filter costs far more than the image (``lncc:window=100001``).

    Raises:
        InputError: the window is larger than the image's largest side, naming both.
    """
    radius = getattr(similarity, "radius", None)
    if radius is None or not shape:
        return
    window = 2 * int(radius) + 1
    largest = max(int(n) for n in shape)
    if window > largest:
        raise InputError(
            f"{what}: its window spans {window} voxels (radius {radius}), larger than the "
            f"image ({'x'.join(map(str, shape))}); choose a smaller window or radius"
        )
