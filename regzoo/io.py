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
import gzip
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
    "Grid",
    "OutputError",
    "Volume",
    "atomic_path",
    "atomic_write_text",
    "check_same_grid",
    "displacement_from_itk",
    "displacement_to_itk",
    "max_voxels",
    "output_folder",
    "read_displacement",
    "read_volume",
    "resample_like",
    "same_grid",
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
    if not text.strip().isdigit() or int(text) < 1:
        raise InputError(f"REGZOO_MAX_VOXELS must be a positive integer, got {text!r}")
    return int(text)


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
    data = _read_array(path, image, budget)
    return Volume(data.reshape(_spatial_shape(data.shape, path)), np.asarray(image.affine), path)


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
    data = _read_array(path, image, budget)
    if _is_itk_field(image, data.shape):
        vectors = data[:, :, :, 0]
        if vectors.shape[2] == 1 and vectors.shape[-1] == 2:  # a 2D field (X, Y, 1, 1, 2)
            vectors = vectors[:, :, 0]
        vectors = rearrange(vectors, "... d -> d ...")
        if vectors.shape[0] != vectors.ndim - 1:
            raise InputError(f"{path}: an ITK displacement of shape {data.shape} is not 2D/3D")
        return Volume(displacement_from_itk(vectors, image.affine), image.affine, path)
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector layout (X, Y, Z, 1, 3), voxels
        data = data[:, :, :, 0]
    elif data.ndim == 4 and data.shape[2] == 1 and data.shape[3] == 2:  # 2D (X, Y, 1, 2)
        data = data[:, :, 0]
    if data.ndim not in (3, 4) or data.shape[-1] != data.ndim - 1:
        raise InputError(
            f"{path}: expected a displacement of shape (X, Y, 2) or (X, Y, Z, 3), got {data.shape}"
        )
    return Volume(np.ascontiguousarray(rearrange(data, "... d -> d ...")), image.affine, path)


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
