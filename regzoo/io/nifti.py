"""NIfTI volumes and displacement fields in and out (Learn2Reg and ITK layouts), each bad
file reported once, by name, with sizes checked from the header before any voxel is read."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from einops import rearrange

from regzoo._errors import InputError, MissingFileError
from regzoo.io.geometry import Volume, check_affine
from regzoo.io.outputs import atomic_path

__all__ = [
    "MAX_VOXELS",
    "displacement_from_itk",
    "displacement_to_itk",
    "max_voxels",
    "read_displacement",
    "read_volume",
    "write_displacement",
    "write_itk_displacement",
    "write_nifti",
]


MAX_VOXELS = 2**28
"""Default voxel budget of one volume (268 M voxels, e.g. 645^3; ``REGZOO_MAX_VOXELS``)."""


_UNREADABLE = (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError)


def max_voxels() -> int:
    """The voxel budget: ``REGZOO_MAX_VOXELS`` from the environment, else
    [`MAX_VOXELS`][regzoo.io.nifti.MAX_VOXELS].

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
        budget: maximum number of voxels (default [`max_voxels`][regzoo.io.nifti.max_voxels]).

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
        A [`Volume`][regzoo.io.geometry.Volume] whose ``data`` is ``(D, *spatial)`` in voxels.

    Raises:
        MissingFileError, InputError: as [`read_volume`][regzoo.io.nifti.read_volume], or a last
            axis that is not the number of spatial dimensions.
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
