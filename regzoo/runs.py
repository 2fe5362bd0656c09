"""Run directories of ``regzoo train``: who owns them, who uses them, how checkpoints land.

- **Ownership**: a run directory regzoo writes holds [`RUN_MARKER`][regzoo.runs.RUN_MARKER];
  ``--overwrite`` only replaces such a run (or an empty folder), never a folder of someone else's
  files.
- **Use**: a run directory is locked ([`run_lock`][regzoo.runs.run_lock]) while a run trains in it,
  so a second ``train`` into the same place is refused instead of silently replacing the first one's
  model.
- **Checkpoints**: [`AtomicCheckpointIO`][regzoo.runs.AtomicCheckpointIO] writes every checkpoint to
  a temporary file in its own folder (never ``$TMPDIR``, which may be another file system), flushes
  it to the disk and renames it over the previous one: a kill or a full disk keeps the last good
  checkpoint.
- **Resuming**: [`check_checkpoint`][regzoo.runs.check_checkpoint] reads a checkpoint before
  training resumes from it and turns every way it can be broken into one message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from regzoo._errors import InputError, OutputExistsError, checkpoint_read_reason
from regzoo.checkpoint import (
    CHECKPOINT_KEY,
    RESUMABLE,
    check_resume,
    config_changes,
    model_weights,
)
from regzoo.fingerprint import add_fingerprint, check_fingerprint
from regzoo.io import atomic_save, atomic_write_text, make_folder

__all__ = [
    "LOCK_NAME",
    "RESUMABLE",
    "RUN_CONTENTS",
    "RUN_MARKER",
    "AtomicCheckpointIO",
    "check_checkpoint",
    "check_replaceable",
    "mark_run",
    "record_resume",
    "remove_run",
    "resume_config",
    "run_lock",
]

RUN_CONTENTS = ("config.yaml", "checkpoints", "tensorboard", "resume.log")
"""What ``train`` writes in a run directory (with the marker, all that ``overwrite`` removes)."""

RUN_MARKER = ".regzoo-run"
"""File that marks a folder as a regzoo run directory (only such runs are ever replaced)."""

LOCK_NAME = ".regzoo-lock"
"""File locked (``flock``) while a run trains in its directory."""

_OURS = {RUN_MARKER, LOCK_NAME}


def _legacy_run(run_dir: Path) -> bool:
    """A run written before the marker existed: only ``config.yaml``, ``checkpoints/*.ckpt``
    and TensorBoard's own files, nothing else."""
    names = {p.name for p in run_dir.iterdir()} - _OURS
    if not names <= set(RUN_CONTENTS) or not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return False
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists() and not all(
        p.is_file() and p.suffix == ".ckpt" for p in checkpoints.iterdir()
    ):
        return False
    tensorboard = run_dir / "tensorboard"
    if tensorboard.exists() and not all(
        p.name.startswith("events.out.tfevents.") or p.name == "hparams.yaml"
        for p in tensorboard.iterdir()
    ):
        return False
    return _is_regzoo_checkpoint(run_dir / "checkpoints" / "last.ckpt")


def _is_regzoo_checkpoint(path: Path) -> bool:
    """Proof that a legacy run is regzoo's: its ``last.ckpt`` opens (``weights_only``) as a
    regzoo checkpoint (a regular file, not a link, holding the regzoo config)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file is simply not proof
        return False
    return isinstance(state, Mapping) and isinstance(state.get(CHECKPOINT_KEY), Mapping)


_MARKER_TEXT = "written by regzoo train; train --overwrite may replace this run\n"


def _marked(run_dir: Path) -> bool:
    """The folder's marker says it is a regzoo run (a regular file with regzoo's text)."""
    marker = run_dir / RUN_MARKER
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        return marker.read_text(errors="replace").startswith("written by regzoo train")
    except OSError:
        return False


def check_replaceable(run_dir: str | Path) -> None:
    """Check that ``train --overwrite`` may replace ``run_dir``: it does not exist, is empty,
    or holds a run regzoo wrote ([`RUN_MARKER`][regzoo.runs.RUN_MARKER]).

    Raises:
        OutputExistsError: ``run_dir`` is a file, or a folder of files regzoo did not write.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise OutputExistsError(f"run_dir {run_dir} exists and is not a folder")
    entries = {p.name for p in run_dir.iterdir()} - _OURS
    if not entries or _marked(run_dir) or _legacy_run(run_dir):
        return
    raise OutputExistsError(
        f"run_dir {run_dir} is not a regzoo run directory (it holds "
        f"{', '.join(sorted(entries)[:4])}{', ...' if len(entries) > 4 else ''}); --overwrite "
        "only replaces a run regzoo wrote or an empty folder: choose another run_dir"
    )


def remove_run(run_dir: str | Path) -> None:
    """Remove what a previous run wrote in ``run_dir`` (after
    [`check_replaceable`][regzoo.runs.check_replaceable])."""
    import shutil

    run_dir = Path(run_dir)
    for name in RUN_CONTENTS:
        target = run_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def mark_run(run_dir: str | Path) -> None:
    """Create ``run_dir`` (umask modes) and mark it as a regzoo run directory."""
    run_dir = make_folder(run_dir)
    if not _marked(run_dir):
        atomic_write_text(_MARKER_TEXT, run_dir / RUN_MARKER)


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs (released when the process dies).

    Raises:
        OutputExistsError: another process trains in ``run_dir``.
    """
    run_dir = make_folder(run_dir)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = run_dir / LOCK_NAME
    try:  # never through a link: the lock is truncated, and must not truncate a user's file
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as exc:
        if not path.is_symlink():
            raise OutputExistsError(f"cannot open the lock {path}: {exc.strerror}") from None
        raise OutputExistsError(
            f"run_dir {run_dir}: its lock file {LOCK_NAME} is a symlink (regzoo never writes "
            "through it); remove the link and run again"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise OutputExistsError(
                f"run_dir {run_dir} is in use by another regzoo train (process {other}); "
                "wait for it to finish or choose another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe against kills and full disks.

    Lightning's own writer stages a checkpoint in ``$TMPDIR`` and moves it, which copies the
    file when ``$TMPDIR`` is another file system: a kill during the copy leaves a truncated
    ``last.ckpt``. This one writes with [`regzoo.io.atomic_save`][regzoo.io.outputs.atomic_save] (a
    temporary file in the checkpoint's own folder, ``fsync``, ``os.replace``).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (``OutputError`` when the disk is full:
        the previous checkpoint is kept)."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        add_fingerprint(checkpoint, CHECKPOINT_KEY)  # checked when the checkpoint is loaded
        atomic_save(checkpoint, Path(path))


def resume_config(
    config_file: str | Path, run_dir: str | Path, overrides: list[str]
) -> tuple[Any, list[str]]:
    """The config a resumed run continues with: the run's own ``config.yaml`` (not the YAML
    given now), with the explicit ``--set`` overrides that a resumed run may change
    ([`RESUMABLE`][regzoo.checkpoint.RESUMABLE], e.g. more steps).

    Returns:
        The config, and the lines that say what changed and what of the given YAML is ignored.

    Raises:
        MissingFileError: the run has no ``config.yaml``.
        InputError: an override changes the model or a setting a resumed run keeps.
    """
    from regzoo._errors import MissingFileError
    from regzoo.config import load_config

    run_dir = Path(run_dir)
    stored_path = run_dir / "config.yaml"
    if not stored_path.is_file():
        raise MissingFileError(f"nothing to resume: {stored_path} does not exist")
    place = [f"run_dir={run_dir}"]
    stored = load_config(stored_path, place)
    resumed = load_config(stored_path, [*overrides, *place])
    notes = check_resume(stored, resumed, run_dir)
    given = load_config(config_file, [*overrides, *place])
    ignored = config_changes(resumed, given)
    if ignored:
        notes.append(
            f"note: {config_file} differs from {stored_path} in "
            f"{', '.join(list(ignored)[:5])}{', ...' if len(ignored) > 5 else ''}; the run "
            "continues with its own values (change one with --set)"
        )
    return resumed, notes


def record_resume(run_dir: str | Path, notes: list[str]) -> None:
    """Append a resumed run's changes to ``run_dir/resume.log`` (one block per resume)."""
    import time

    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S')} resumed", *(f"  {n}" for n in notes)]
    with (Path(run_dir) / "resume.log").open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def check_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Read a checkpoint that training will resume from, and check it fits ``model``.

    Returns:
        The checkpoint's content.

    Raises:
        InputError: unreadable (truncated, not a checkpoint, a pickle payload), another
            model's weights, or NaN/infinite weights: one message naming the file.
    """
    path = Path(path)
    hint = "start the run again with --overwrite (or resume a copy of an older checkpoint)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"cannot resume from {path}: the file is truncated, corrupt or not a checkpoint "
            f"({checkpoint_read_reason(exc)}); {hint}"
        ) from None
    if not isinstance(state, Mapping) or not isinstance(state.get(CHECKPOINT_KEY), Mapping):
        raise InputError(f"cannot resume from {path}: not a regzoo checkpoint; {hint}")
    weights = state.get("state_dict")
    if not isinstance(weights, Mapping):
        raise InputError(f"cannot resume from {path}: it holds no weights; {hint}")
    weights = model_weights(weights)  # as the RegistrationModel names them
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        k
        for k in expected
        if k in weights
        and (not torch.is_tensor(weights[k]) or weights[k].shape != expected[k].shape)
    ]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise InputError(
            f"cannot resume from {path}: its weights do not match the run's config (first "
            f"difference: {first}); {hint}"
        )
    bad = [k for k, v in weights.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(
            f"cannot resume from {path}: {len(bad)} weight tensors hold NaN or infinite values "
            f"(first: {bad[0]}); the training diverged; {hint}"
        )
    check_fingerprint(path, state[CHECKPOINT_KEY], weights)
    return dict(state)
