"""Atomic file output: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_text", "write_csv"]


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` so readers never see a half-written file."""
    path = Path(path)
    tmp = _partial(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write dict rows as CSV (columns in first-seen order), atomically."""
    path = Path(path)
    tmp = _partial(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path
