"""Volumes with their geometry: [`Grid`][regzoo.io.geometry.Grid],
[`Volume`][regzoo.io.geometry.Volume], affine checks, grid comparison and resampling onto another
grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regzoo._errors import InputError

__all__ = [
    "Grid",
    "Volume",
    "check_affine",
    "check_same_grid",
    "resample_like",
    "same_grid",
]


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
        """The volume's [`Grid`][regzoo.io.geometry.Grid] (named ``folder/file`` after its file)."""
        name = f"{self.path.parent.name}/{self.path.name}" if self.path else self.name
        return Grid(self.shape, self.affine, name)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each array axis, in mm."""
        return self.grid.spacing

    def tensor(self) -> torch.Tensor:
        """The voxels as a float32 tensor ``(*spatial)`` (shares memory)."""
        return torch.from_numpy(self.data)


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
