"""Outputs that no reader sees half-written: atomic files, output folders and output sets
swapped in whole, and the staging files of killed runs cleaned up.

The module is long because ownership and atomicity are one promise (docs/reliability.md): the
marker that proves a folder is regzoo's, the list of files it may replace, the staging, the
swap and the recovery of a killed swap must be read together to check it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from regzoo._errors import InputError, OutputExistsError, RegzooError

__all__ = [
    "OUTPUT_MARKER",
    "REPORT_MARKER",
    "OutputError",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "check_output_files",
    "check_output_folder",
    "clean_stale_staging",
    "make_folder",
    "output_files",
    "output_folder",
    "resolve_output",
    "staging_folder",
    "write_csv",
]


OUTPUT_MARKER = ".regzoo-output"
"""File that marks a folder as a regzoo output set (only such folders are ever replaced)."""


class OutputError(RegzooError, OSError):
    """An output could not be written (unwritable folder, a file where a folder is needed)."""


def _staged_file(path: Path) -> Path:
    """A new empty temporary file beside ``path``, the one form every atomic write stages in:
    ``.NAME.regzoo-staging-PID-*`` with ``path``'s suffixes (writers that pick the format from
    the suffix, as nibabel does, write it directly), with the mode the umask gives; the staged
    files of killed runs into the same place are removed first.

    Raises:
        OSError: the folder cannot be written.
    """
    clean_stale_staging(path)
    fd, name = tempfile.mkstemp(
        prefix=_staging_name(path), suffix="".join(path.suffixes), dir=path.parent
    )
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _fsync(path: Path) -> None:
    """Flush a written file (or a folder's entries) to the disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # a folder that cannot be opened (some platforms): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # not supported there, nothing to do
            raise
    finally:
        os.close(fd)


def _os_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return OutputError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it into place on success.

    The temporary file lies in the target's own folder (so the final rename never copies
    across file systems), is flushed to the disk (``fsync``) and then renamed with
    ``os.replace``: a kill or a full disk leaves the previous file or the new one, never a
    truncated one. On failure the temporary file is removed and ``path`` is left as it was.

    Raises:
        OutputError: if the file cannot be written (the message names it).
    """
    path = Path(path)
    try:
        tmp = _staged_file(path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except RegzooError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _os_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file in the same folder, flushed
    and ``fsync``-ed, then ``os.replace``-d over ``path`` (what checkpoints are written with).

    Raises:
        OutputError: the file cannot be written (a full disk: the previous file is kept).
    """
    path = make_folder(Path(path).parent) / Path(path).name
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)
    return path


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


def _umask() -> int:
    """The process's umask (read without changing it where the system allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_folder(path: str | Path) -> Path:
    """Create ``path`` (and its parents) with the modes the umask gives, like ``mkdir -p``.

    Raises:
        OutputError: the folder cannot be created (a file is in the way, no permission).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(path, exc) from None
    return path


_STAGING = ".regzoo-staging-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_staging(target: str | Path) -> list[Path]:
    """Remove the staging folders and files a killed regzoo process left beside ``target``
    (``.NAME.regzoo-staging-PID-*`` whose process no longer runs); returns what was removed."""
    target = Path(target)
    removed: list[Path] = []
    prefix = f".{target.name}{_STAGING}"
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    # a run killed between moving the previous set aside and moving the new one in: the
    # previous set goes back into place first (it is never deleted as litter)
    entries.sort(key=lambda e: "-old" not in e.name)
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text, _, kind = entry.name[len(prefix) :].partition("-")
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        previous = entry / "set"
        if kind.startswith("old") and previous.is_dir() and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                previous.rename(target)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _staging_name(target: Path, kind: str = "") -> str:
    return f".{target.name}{_STAGING}{os.getpid()}-{kind}"


def staging_folder(target: str | Path, *, mode: int | None = None) -> Path:
    """A new hidden staging folder beside ``target`` to build an output in, then rename into
    place: its mode is ``mode`` (default: what the umask gives a new folder, not 0700), and
    the staging folders of killed runs into the same place are removed first.

    Raises:
        OutputError: the parent folder cannot be written.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=_staging_name(target), dir=target.parent))
        os.chmod(staging, 0o777 & ~_umask() if mode is None else mode)
    except OSError as exc:
        raise _os_error(target, exc) from None
    return staging


def resolve_output(target: str | Path) -> Path:
    """The path an output is written to: a symlink the user gave is followed (the results land
    where it points and the link stays).

    Raises:
        OutputError: a dangling symlink.
    """
    target = Path(target)
    if target.is_symlink():
        resolved = Path(os.path.realpath(target))
        if not resolved.exists():
            raise OutputError(f"output {target} is a symlink to {resolved}, which does not exist")
        return resolved
    return target


def check_output_folder(target: str | Path, *, overwrite: bool = True) -> Path:
    """Check that [`output_folder`][regzoo.io.outputs.output_folder] may write ``target`` (new,
    empty, or a regzoo output set); returns the folder it writes (a symlink followed).

    Raises:
        OutputExistsError: ``target`` is a file or a folder regzoo did not write (or a regzoo
            output set and ``overwrite`` is false).
        OutputError: a dangling symlink.
    """
    target = resolve_output(target)
    clean_stale_staging(target)  # a set a killed run had moved aside is back in place first
    if target.exists():
        if not target.is_dir():
            raise OutputExistsError(f"output {target} exists and is not a folder")
        ours = (target / OUTPUT_MARKER).is_file() and not (target / OUTPUT_MARKER).is_symlink()
        empty = not any(target.iterdir())
        if not (empty or (ours and overwrite)):
            reason = "is not a regzoo output folder" if not ours else "exists"
            raise OutputExistsError(
                f"output folder {target} {reason}; choose a new or empty folder"
                + ("" if not ours else " or pass --overwrite")
            )
        if ours and not empty:
            _check_only_ours(target)
    return target


def _tree(folder: Path) -> set[str]:
    """Every file and folder under ``folder`` as a relative POSIX path (links not followed)."""
    found: set[str] = set()
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found.update((base / name).as_posix() for name in [*dirs, *files])
    return found


def _written_files(folder: Path) -> set[str] | None:
    """The files an output set's marker lists (``None``: an older marker that lists none)."""
    try:
        data = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def _check_only_ours(target: Path) -> None:
    """Refuse to replace an output set whose folder holds files its marker does not list."""
    written = _written_files(target)
    if written is None:
        raise OutputExistsError(
            f"output folder {target} was written by an older regzoo whose marker does not list "
            "its files, so it cannot be replaced safely; remove it or choose a new folder"
        )
    others = sorted(_tree(target) - written - {OUTPUT_MARKER})
    if others:
        raise OutputExistsError(
            f"output folder {target} holds files regzoo did not write "
            f"({', '.join(others[:4])}{', ...' if len(others) > 4 else ''}); move them away "
            "or choose a new folder"
        )


@contextlib.contextmanager
def output_folder(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Build an output set in a staging folder beside ``target``, then swap it into place.

    A killed or failed command leaves the previous set (or none), never a mix of old and new
    files. Only folders that regzoo wrote (they hold
    [`OUTPUT_MARKER`][regzoo.io.outputs.OUTPUT_MARKER]) or empty ones are replaced; anything else is
    refused, so ``--out`` can never delete a user's files. A symlinked ``target`` is written through
    (the link stays); a replaced folder keeps its mode and a new one gets the umask's; staging
    folders left by a killed run are removed.

    Args:
        target: the output folder.
        overwrite: replace a previous regzoo output set (``False``: refuse).

    Raises:
        OutputExistsError: ``target`` exists and is not an empty folder or a previous
            regzoo output (or ``overwrite`` is false).
        OutputError: the parent folder cannot be written.
    """
    target = check_output_folder(target, overwrite=overwrite)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o777 & ~_umask()
    staging = staging_folder(target, mode=mode)
    try:
        yield staging
        files = sorted(_tree(staging) - {OUTPUT_MARKER})
        marker = {"regzoo_output": "written by regzoo; only the files listed here are replaced",
                  "files": files}  # fmt: skip
        atomic_write_text(json.dumps(marker, indent=1) + "\n", staging / OUTPUT_MARKER)
        check_output_folder(target, overwrite=overwrite)  # again: files added meanwhile
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_staging_name(target, "old"), dir=target.parent))
            target.rename(old / "set")
        staging.rename(target)
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except RegzooError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _os_error(target, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


REPORT_MARKER = "regzoo_report"
"""Key of a JSON report regzoo wrote (only such a report, and its CSV, is ever replaced)."""


def _is_regzoo_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and REPORT_MARKER in data


def check_output_files(paths: Sequence[str | Path]) -> list[Path]:
    """Check that a set of output files (its JSON report first) may be written: each is new,
    or the report is one regzoo wrote; returns the paths (symlinks followed).

    Raises:
        OutputExistsError: a file of the set exists and regzoo did not write it, or a folder.
        InputError: two of the paths are the same file.
    """
    resolved = [resolve_output(p) for p in paths]
    if len({os.path.abspath(p) for p in resolved}) != len(resolved):
        raise InputError(f"the output files {', '.join(map(str, paths))} must differ")
    head = resolved[0]
    ours = head.is_file() and _is_regzoo_report(head)
    for given, path in zip(paths[1:], resolved[1:], strict=True):
        if Path(given).is_symlink():  # a companion is never written through a link
            raise OutputExistsError(
                f"output {given} is a symlink (to {path}); regzoo does not write a report's "
                "companion file through a link: remove the link or choose a new file name"
            )
    for path in resolved:
        if path.is_dir():
            raise OutputExistsError(f"output {path} is a folder; give a file name")
        if path.exists() and not ours:
            raise OutputExistsError(
                f"output {path} exists and is not a regzoo report; choose a new file name "
                "(regzoo only replaces reports it wrote)"
            )
    return resolved


def output_files(contents: Mapping[str | Path, str]) -> list[Path]:
    """Write a set of text files together: each to a temporary file beside it, all flushed,
    then all renamed into place (a full disk or a failure leaves every old file as it was).

    The first file is the set's JSON report; an existing one is replaced only when regzoo wrote
    it (it holds [`REPORT_MARKER`][regzoo.io.outputs.REPORT_MARKER]), and the other files only
    together with it.

    Raises:
        OutputExistsError: a file of the set exists and regzoo did not write it.
        OutputError: the files cannot be written (the message names the file).
    """
    paths = check_output_files(list(contents))
    head = paths[0]
    make_folder(head.parent)
    staged: list[Path] = []
    try:
        for path, text in zip(paths, contents.values(), strict=True):
            staged.append(_staged_file(path))
            with staged[-1].open("w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, path in zip(reversed(staged), reversed(paths), strict=True):
            os.replace(tmp, path)  # the report last: a reader sees it with its CSV
        _fsync(head.parent)
    except OSError as exc:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        raise _os_error(head, exc) from None
    except BaseException:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    return paths
