"""Files in and out: NIfTI volumes with their geometry, displacement fields, atomic outputs.

Every NIfTI file regzoo reads or writes goes through this module, so that each bad file gets
one clear message naming it (:class:`~regzoo._errors.InputError`), sizes are checked from the
header before any voxel is read (:data:`MAX_VOXELS`), two images are compared on their grids
(shape and affine) rather than on their shapes alone, and no reader ever sees a half-written
file or a half-replaced output folder.

Conventions: volumes are 2D or 3D arrays in the NIfTI's voxel order with its affine (voxel ->
RAS mm); a displacement is stored as the Learn2Reg layout ``(*spatial, D)`` in voxels on the
fixed grid and handled in memory as ``(D, *spatial)``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gzip
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from einops import rearrange

from regzoo._errors import InputError, MissingFileError, OutputExistsError, RegzooError

__all__ = [
    "MAX_VOXELS",
    "OUTPUT_MARKER",
    "REPORT_MARKER",
    "Grid",
    "OutputError",
    "Volume",
    "atomic_path",
    "atomic_save",
    "atomic_write_text",
    "check_affine",
    "check_output_files",
    "check_output_folder",
    "check_same_grid",
    "clean_stale_staging",
    "displacement_from_itk",
    "displacement_to_itk",
    "make_folder",
    "max_voxels",
    "output_files",
    "output_folder",
    "read_displacement",
    "read_volume",
    "resample_like",
    "resolve_output",
    "same_grid",
    "staging_folder",
    "write_csv",
    "write_displacement",
    "write_itk_displacement",
    "write_nifti",
]

MAX_VOXELS = 2**28
"""Default voxel budget of one volume (268 M voxels, e.g. 645^3; ``REGZOO_MAX_VOXELS``)."""

OUTPUT_MARKER = ".regzoo-output"
"""File that marks a folder as a regzoo output set (only such folders are ever replaced)."""

_UNREADABLE = (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError)


class OutputError(RegzooError, OSError):
    """An output could not be written (unwritable folder, a file where a folder is needed)."""


def max_voxels() -> int:
    """The voxel budget: ``REGZOO_MAX_VOXELS`` from the environment, else :data:`MAX_VOXELS`.

    Raises:
        InputError: if the environment variable is not a positive integer.
    """
    text = os.environ.get("REGZOO_MAX_VOXELS")
    if text is None:
        return MAX_VOXELS
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
        raise InputError(f"REGZOO_MAX_VOXELS must be a positive integer, got {text!r}")
    return int(digits)


@dataclass(frozen=True)
class Grid:
    """Where a volume's voxels lie: its spatial shape and voxel -> RAS mm affine.

    Attributes:
        shape: the spatial shape (2 or 3 sizes).
        affine: ``4 x 4`` voxel -> RAS millimetre matrix (NIfTI convention).
        name: what to call it in messages (the file name).
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    name: str = "array"

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each array axis, in mm (from the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, : len(self.shape)], axis=0))

    def describe(self) -> str:
        """``"name: 64x64x64, spacing 1.75x1.75x1.75 mm, origin (0, 0, 0)"``."""
        shape = "x".join(str(n) for n in self.shape)
        spacing = "x".join(f"{s:.4g}" for s in self.spacing)
        origin = ", ".join(f"{o:.4g}" for o in self.affine[:3, 3])
        return f"{self.name}: {shape}, spacing {spacing} mm, origin ({origin})"


@dataclass(frozen=True)
class Volume:
    """A 2D or 3D volume with its geometry.

    Attributes:
        data: the voxels, float32, ``(*spatial)``.
        affine: ``4 x 4`` voxel -> RAS millimetre matrix (NIfTI convention).
        path: the file it came from (``None`` for arrays).
        name: what to call an array without a file in messages (``"fixed image"``).
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    name: str = "array"

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape."""
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions (2 or 3)."""
        return self.data.ndim

    @property
    def grid(self) -> Grid:
        """The volume's :class:`Grid` (named ``folder/file`` after its file)."""
        name = f"{self.path.parent.name}/{self.path.name}" if self.path else self.name
        return Grid(self.shape, self.affine, name)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each array axis, in mm."""
        return self.grid.spacing

    def tensor(self) -> torch.Tensor:
        """The voxels as a float32 tensor ``(*spatial)`` (shares memory)."""
        return torch.from_numpy(self.data)


def _spatial_shape(shape: Sequence[int], path: Path) -> tuple[int, ...]:
    """Drop trailing singleton axes beyond two (a 2D image stored as ``(X, Y, 1)``)."""
    dims = list(shape)
    while len(dims) > 2 and dims[-1] == 1:
        dims.pop()
    if len(dims) not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D image, got shape {tuple(shape)}")
    return tuple(dims)


def _open(path: str | Path, what: str) -> tuple[Path, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    try:
        return path, nib.load(str(path))
    except _UNREADABLE as exc:
        raise InputError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from None


def _read_array(path: Path, image: Any, budget: int | None) -> np.ndarray:
    shape = tuple(int(n) for n in image.shape)
    limit = max_voxels() if budget is None else budget
    if int(np.prod(shape, dtype=np.float64)) > limit:
        raise InputError(
            f"{path}: its header announces {shape} = {np.prod(shape, dtype=np.float64):.3g} "
            f"voxels, over the budget of {limit:.3g} (set REGZOO_MAX_VOXELS to allow more)"
        )
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except (*_UNREADABLE, gzip.BadGzipFile) as exc:
        raise InputError(
            f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__}: {exc})"
        ) from None
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite values")
    return data


def check_affine(affine: np.ndarray, path: str | Path, ndim: int = 3) -> None:
    """Check that a voxel -> mm affine is finite and invertible (a zero or singular affine
    makes every millimetre measure meaningless).

    Raises:
        InputError: naming the file and the affine's voxel -> mm block.
    """
    block = np.asarray(affine, dtype=np.float64)[:3, :3]
    scale = float(np.abs(block).max()) if np.isfinite(block).all() else 0.0
    if scale == 0.0 or abs(float(np.linalg.det(block))) <= (1e-6 * scale) ** 3:
        rows = "; ".join(" ".join(f"{v:.4g}" for v in row) for row in block)
        raise InputError(
            f"{path}: its affine (voxel -> mm) is singular or not finite ([{rows}]): the "
            "header's geometry is broken; fix its sform/qform (e.g. with nibabel) first"
        )


def _check_axes(shape: tuple[int, ...], path: Path) -> None:
    if min(shape) < 2:
        raise InputError(
            f"{path}: shape {shape} has an axis of one voxel; registration needs at least 2 "
            "voxels along every axis (a 2D image is stored as (X, Y) or (X, Y, 1))"
        )


def read_volume(path: str | Path, *, what: str = "image", budget: int | None = None) -> Volume:
    """Read a 2D or 3D NIfTI volume as float32 with its affine.

    The size is checked from the header before the voxels are read.

    Args:
        path: the NIfTI file.
        what: what the file is, for messages (``"image"``, ``"mask"``...).
        budget: maximum number of voxels (default :func:`max_voxels`).

    Raises:
        MissingFileError: the file does not exist.
        InputError: not NIfTI, truncated, over the budget, not 2D/3D, or NaN/inf values.
    """
    path, image = _open(path, what)
    check_affine(image.affine, path)
    data = _read_array(path, image, budget)
    shape = _spatial_shape(data.shape, path)
    _check_axes(shape, path)
    return Volume(data.reshape(shape), np.asarray(image.affine), path)


LPS_FROM_RAS = np.array([-1.0, -1.0, 1.0])
"""Sign flips between RAS (NIfTI) and LPS (ITK) physical coordinates."""


def _voxel_to_mm(affine: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(affine, dtype=np.float64)[:ndim, :ndim]


def displacement_to_itk(displacement: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel displacement ``(D, *spatial)`` -> ITK vectors ``(D, *spatial)`` in LPS mm.

    The fixed point with voxel index ``x`` maps to the moving point ``x + u(x)``; in physical
    space that is ``p -> p + A u`` with ``A`` the affine's voxel -> RAS mm block, which ITK
    stores with its x and y components negated (LPS).
    """
    ndim = displacement.shape[0]
    ras = np.einsum("ij,j...->i...", _voxel_to_mm(affine, ndim), displacement)
    return (ras * LPS_FROM_RAS[:ndim].reshape(-1, *([1] * ndim))).astype(np.float32)


def displacement_from_itk(vectors: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """ITK vectors ``(D, *spatial)`` in LPS mm -> voxel displacement on the same grid."""
    ndim = vectors.shape[0]
    ras = vectors * LPS_FROM_RAS[:ndim].reshape(-1, *([1] * ndim))
    to_voxels = np.linalg.inv(_voxel_to_mm(affine, ndim))
    return np.einsum("ij,j...->i...", to_voxels, ras).astype(np.float32)


def _is_itk_field(image: Any, shape: tuple[int, ...]) -> bool:
    """ITK/ANTs displacement fields are vector NIfTIs ``(*spatial, 1, D)`` (intent 1007)."""
    return image.header.get_intent()[0] == "vector" and len(shape) == 5 and shape[3] == 1


def read_displacement(path: str | Path, *, budget: int | None = None) -> Volume:
    """Read a displacement field, recognised by content, as voxels on its own grid.

    Two conventions are read: the Learn2Reg layout ``(*spatial, D)`` in voxels (what
    ``disp.nii.gz`` holds), and an ITK displacement-field transform (a vector NIfTI
    ``(*spatial, 1, D)`` with intent code 1007, vectors in LPS millimetres, as written by ITK,
    ANTs, SimpleITK, 3D Slicer and ``displacement_itk.nii.gz``), converted to voxels.

    Returns:
        A :class:`Volume` whose ``data`` is ``(D, *spatial)`` in voxels.

    Raises:
        MissingFileError, InputError: as :func:`read_volume`, or a last axis that is not the
            number of spatial dimensions.
    """
    path, image = _open(path, "displacement")
    check_affine(image.affine, path)
    data = _read_array(path, image, budget)
    if _is_itk_field(image, data.shape):
        vectors = data[:, :, :, 0]
        if vectors.shape[2] == 1 and vectors.shape[-1] == 2:  # a 2D field (X, Y, 1, 1, 2)
            vectors = vectors[:, :, 0]
        vectors = rearrange(vectors, "... d -> d ...")
        if vectors.shape[0] != vectors.ndim - 1:
            raise InputError(f"{path}: an ITK displacement of shape {data.shape} is not 2D/3D")
        return _bounded(Volume(displacement_from_itk(vectors, image.affine), image.affine, path))
    if image.header.get_intent()[0] == "vector":
        raise InputError(
            f"{path}: a vector-intent field of shape {data.shape} is ambiguous: ITK fields "
            "(vectors in LPS mm) are stored as (X, Y, Z, 1, 3), Learn2Reg fields (voxels) as "
            "(X, Y, Z, 3) without an intent; rewrite it in one of these layouts"
        )
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector layout (X, Y, Z, 1, 3), voxels
        data = data[:, :, :, 0]
    elif data.ndim == 4 and data.shape[2] == 1 and data.shape[3] == 2:  # 2D (X, Y, 1, 2)
        data = data[:, :, 0]
    if data.ndim not in (3, 4) or data.shape[-1] != data.ndim - 1:
        raise InputError(
            f"{path}: expected a displacement of shape (X, Y, 2) or (X, Y, Z, 3), got {data.shape}"
        )
    field = np.ascontiguousarray(rearrange(data, "... d -> d ..."))
    return _bounded(Volume(field, image.affine, path))


MAX_DISPLACEMENT = 1000.0
"""Largest displacement read, in multiples of the grid's largest size (beyond: not a field)."""


def _bounded(field: Volume) -> Volume:
    limit = MAX_DISPLACEMENT * max(field.shape[1:])
    largest = float(np.abs(field.data).max()) if field.data.size else 0.0
    if not largest <= limit:
        raise InputError(
            f"{field.path}: displacements up to {largest:.3g} voxels, over {MAX_DISPLACEMENT:g} "
            f"times the grid's size ({limit:.3g}): not a displacement field in voxels"
        )
    return field


def same_grid(reference: Grid, other: Grid, *, tolerance: float = 1e-3) -> bool:
    """Whether two grids have the same shape and affines within ``tolerance`` mm."""
    return reference.shape == other.shape and np.allclose(
        reference.affine, other.affine, atol=tolerance, rtol=0
    )


def check_same_grid(reference: Grid, other: Grid, *, tolerance: float = 1e-3) -> None:
    """Check that ``other`` lies on ``reference``'s grid: same shape, same affine.

    The affines may differ by ``tolerance`` mm (header rounding).

    Raises:
        InputError: naming both grids.
    """
    if not same_grid(reference, other, tolerance=tolerance):
        raise InputError(
            f"images on different grids: {reference.describe()} vs {other.describe()} "
            "(resample one onto the other's grid first)"
        )


def resample_like(volume: Volume, reference: Volume, *, nearest: bool = False) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid (torchio; nearest for label maps).

    Args:
        volume: the volume to move.
        reference: the grid to move it onto.
        nearest: nearest-neighbour (label maps, masks) instead of linear interpolation.
    """
    import torchio as tio

    def image(vol: Volume, kind: type) -> Any:
        data = vol.tensor().reshape(1, *vol.shape, *([1] * (3 - vol.ndim)))
        return kind(tensor=data.clone(), affine=vol.affine)

    kind = tio.LabelMap if nearest else tio.ScalarImage
    target = image(reference, tio.ScalarImage)
    moved = tio.Resample(target, image_interpolation="linear")(image(volume, kind))
    data = moved.data[0].numpy().astype(np.float32).reshape(reference.shape)
    return Volume(np.ascontiguousarray(data), reference.affine, volume.path)


def _partial(path: Path) -> Path:
    """The temporary beside ``path``, with its suffixes (``.disp.partial.nii.gz``): writers
    that pick the format from the suffix, as nibabel does, write it directly."""
    suffixes = "".join(path.suffixes)
    stem = path.name.removesuffix(suffixes) if suffixes else path.name
    return path.with_name(f".{stem}.partial{suffixes}")


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
    tmp = _partial(path)
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
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(path)  # the temporary file of a run killed while writing
        fd, name = tempfile.mkstemp(prefix=_staging_name(path), dir=path.parent)
    except OSError as exc:
        raise _os_error(path, exc) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _os_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


def write_nifti(array: torch.Tensor | np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Save an array as NIfTI with ``affine``, atomically."""
    return _save_image(nib.Nifti1Image(_numpy(array), affine), path)


def _save_image(image: nib.Nifti1Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))  # the temporary keeps the .nii.gz ending nibabel reads
    return path


def write_itk_displacement(
    displacement: torch.Tensor | np.ndarray, affine: np.ndarray, path: str | Path
) -> Path:
    """Save a voxel displacement ``(D, *spatial)`` as an ITK displacement-field transform.

    The file is a vector NIfTI ``(*spatial, 1, D)`` (intent code 1007) on the fixed image's
    grid (its ``affine``: spacing, origin, direction cosines) whose vectors are in LPS
    millimetres, mapping fixed points to moving points: ANTs (``antsApplyTransforms -t``),
    SimpleITK (``DisplacementFieldTransform``), elastix and 3D Slicer load it as is.
    """
    data = _numpy(displacement)
    vectors = rearrange(displacement_to_itk(data, affine), "d ... -> ... d")
    if data.shape[0] == 2:  # ITK's 2D vector layout (X, Y, 1, 1, 2)
        vectors = vectors[:, :, None]
    image = nib.Nifti1Image(np.ascontiguousarray(vectors[..., None, :]), affine)
    image.header.set_intent("vector")
    return _save_image(image, path)


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def write_displacement(
    displacement: torch.Tensor | np.ndarray, affine: np.ndarray, path: str | Path
) -> Path:
    """Save ``(D, *spatial)`` voxels in the Learn2Reg layout ``(*spatial, D)``, atomically."""
    data = _numpy(displacement)
    return write_nifti(np.ascontiguousarray(rearrange(data, "d ... -> ... d")), affine, path)


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
    removed = []
    prefix = f".{target.name}{_STAGING}"
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
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
    """Check that :func:`output_folder` may write ``target`` (new, empty, or a regzoo output
    set); returns the folder it writes (a symlink followed).

    Raises:
        OutputExistsError: ``target`` is a file or a folder regzoo did not write (or a regzoo
            output set and ``overwrite`` is false).
        OutputError: a dangling symlink.
    """
    target = resolve_output(target)
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
    return target


@contextlib.contextmanager
def output_folder(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Build an output set in a staging folder beside ``target``, then swap it into place.

    A killed or failed command leaves the previous set (or none), never a mix of old and new
    files. Only folders that regzoo wrote (they hold :data:`OUTPUT_MARKER`) or empty ones are
    replaced; anything else is refused, so ``--out`` can never delete a user's files. A
    symlinked ``target`` is written through (the link stays); a replaced folder keeps its mode
    and a new one gets the umask's; staging folders left by a killed run are removed.

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
        atomic_write_text("written by regzoo; the folder is replaced as a whole\n",
                          staging / OUTPUT_MARKER)  # fmt: skip
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
    it (it holds :data:`REPORT_MARKER`), and the other files only together with it.

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
            clean_stale_staging(path)
            fd, name = tempfile.mkstemp(prefix=_staging_name(path), dir=path.parent)
            staged.append(Path(name))
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(name, 0o666 & ~_umask())
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
