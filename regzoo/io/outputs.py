"""Outputs that no reader sees half-written: atomic files and output sets swapped in whole."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from regzoo._errors import OutputExistsError, RegzooError

__all__ = [
    "OUTPUT_MARKER",
    "OutputError",
    "atomic_path",
    "atomic_write_text",
    "output_folder",
    "write_csv",
]

OUTPUT_MARKER = ".regzoo-output"
"""File that marks a folder as a regzoo output set (only such folders are ever replaced)."""


class OutputError(RegzooError, OSError):
    """An output could not be written (unwritable folder, a file where a folder is needed)."""


def _partial(path: Path) -> Path:
    """The temporary beside ``path``, with its suffixes (``.disp.partial.nii.gz``): writers
    that pick the format from the suffix, as nibabel does, write it directly."""
    suffixes = "".join(path.suffixes)
    stem = path.name.removesuffix(suffixes) if suffixes else path.name
    return path.with_name(f".{stem}.partial{suffixes}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it into place on success.

    On failure the temporary file is removed and ``path`` is left as it was.

    Raises:
        OutputError: if the file cannot be written (the message names it).
    """
    path = Path(path)
    tmp = _partial(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except RegzooError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` so readers never see a half-written file.

    Raises:
        OutputError: if the file cannot be written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write dict rows as CSV (columns in first-seen order), atomically."""
    path = Path(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@contextlib.contextmanager
def output_folder(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Build an output set in a staging folder beside ``target``, then swap it into place.

    A killed or failed command leaves the previous set (or none), never a mix of old and new
    files. Only folders that regzoo wrote (they hold :data:`OUTPUT_MARKER`) or empty ones are
    replaced; anything else is refused, so ``--out`` can never delete a user's files.

    Args:
        target: the output folder.
        overwrite: replace a previous regzoo output set (``False``: refuse).

    Raises:
        OutputExistsError: ``target`` exists and is not an empty folder or a previous
            regzoo output (or ``overwrite`` is false).
        OutputError: the parent folder cannot be written.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise OutputExistsError(f"output {target} exists and is not a folder")
        ours = (target / OUTPUT_MARKER).is_file()
        empty = not any(target.iterdir())
        if not (empty or (ours and overwrite)):
            reason = "is not a regzoo output folder" if not ours else "exists"
            raise OutputExistsError(
                f"output folder {target} {reason}; choose a new or empty folder"
                + ("" if not ours else " or pass --overwrite")
            )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        yield staging
        (staging / OUTPUT_MARKER).write_text(
            "written by regzoo; the folder is replaced as a whole\n"
        )
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except RegzooError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
