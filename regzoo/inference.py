"""Test-time registration with a trained model: ``register(model, fixed, moving, **params)``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from regzoo.data.learn2reg import load_volume
from regzoo.model import HyperRegistration
from regzoo.refine import refine as refine_output
from regzoo.spatial import jacobian_determinant, warp

__all__ = [
    "RegistrationResult",
    "build_result",
    "normalize_intensity",
    "read_image",
    "register",
    "save_nifti",
    "segmentation_names",
    "write_result",
]

ImageLike = torch.Tensor | np.ndarray | str | Path


@dataclass
class RegistrationResult:
    """The outcome of :func:`register` for one pair.

    Attributes:
        displacement: ``(D, *spatial)`` voxels on the fixed grid (fixed x -> moving x + u(x)).
        warped: the moving image resampled on the fixed grid, ``(*spatial)``, in the moving
            image's own intensities.
        jacobian_determinant: ``(*spatial)`` determinant of the map's Jacobian.
        params: the free parameter values used (full names).
        affine: the fixed image's affine (identity for tensors).
    """

    displacement: torch.Tensor
    warped: torch.Tensor
    jacobian_determinant: torch.Tensor
    params: dict[str, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))


def read_image(image: ImageLike) -> tuple[torch.Tensor, np.ndarray]:
    """A volume ``(*spatial)`` float32 tensor and its affine, from a path, array or tensor.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: for NaN/inf values or a volume that is not 3D.
    """
    if isinstance(image, str | Path):
        data, affine = load_volume(image)
        tensor = torch.from_numpy(data)
    else:
        tensor = torch.as_tensor(image, dtype=torch.float32)
        affine = np.eye(4)
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError("register(): image contains NaN or infinite values")
    tensor = tensor.squeeze()
    if tensor.ndim != 3:
        raise ValueError(f"register(): expected a 3D volume, got shape {tuple(tensor.shape)}")
    return tensor.float(), affine


def normalize_intensity(image: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """Clip to the CT ``window`` ``(low, high)`` and map to ``[0, 1]`` (as in training)."""
    low, high = window
    return (image.clamp(low, high) - low) / (high - low)


def register(
    model: HyperRegistration,
    fixed: ImageLike,
    moving: ImageLike,
    *,
    refine: int = 0,
    progress: bool = False,
    **params: float,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with the model's network at the given parameters.

    With ``refine > 0`` the network's field is then refined for that many iterations under the
    model's own objective at the same parameters (:func:`regzoo.refine.refine`).

    Args:
        model: a trained model (see :func:`regzoo.model.load_model`).
        fixed: 3D volume (path to a NIfTI file, array or tensor) in raw intensities (HU for
            CT); it is normalised with the model's training window.
        moving: the moving volume, on the same grid as ``fixed``.
        refine: instance-optimisation iterations after the network (0: network only).
        progress: show a progress bar while refining.
        **params: free parameter values by short (``mu``) or full (``linear_elastic.mu``)
            name; the rest take the space's defaults.

    Raises:
        KeyError: an unknown or fixed parameter name.
        ValueError: a value outside the trained range, mismatched shapes or NaN input.

    Examples:
        >>> result = register(model, "fixed.nii.gz", "moving.nii.gz", lam=0.08, mu=0.03)
        >>> result.displacement.shape  # (3, X, Y, Z)
    """
    resolved = model.objective.resolve(params)
    fixed_t, affine = read_image(fixed)
    moving_t, _ = read_image(moving)
    if fixed_t.shape != moving_t.shape:
        raise ValueError(
            f"register(): fixed {tuple(fixed_t.shape)} and moving {tuple(moving_t.shape)} "
            "must have the same shape (resample them onto one grid first)"
        )
    window = model.config.data.intensity_window
    device = model.device
    f = normalize_intensity(fixed_t, window)[None, None].to(device)
    m = normalize_intensity(moving_t, window)[None, None].to(device)
    if refine:
        displacement = refine_output(
            model, f, m, resolved, steps=refine, progress=progress
        ).displacement
    else:
        with torch.no_grad():
            displacement = model(f, m, resolved).displacement
    return build_result(displacement, moving_t, resolved, affine)


def build_result(
    displacement: torch.Tensor,
    moving: torch.Tensor,
    params: Mapping[str, float],
    affine: np.ndarray,
) -> RegistrationResult:
    """The :class:`RegistrationResult` of a field: the moving image warped in its own
    intensities and the Jacobian determinant map.

    Args:
        displacement: ``(1, D, *spatial)`` voxels on the fixed grid, on the model's device.
        moving: the moving volume ``(*spatial)`` in raw intensities.
        params: the free parameter values (full names) that produced the field.
        affine: the fixed image's affine.
    """
    with torch.no_grad():
        warped = warp(moving[None, None].to(displacement.device), displacement)[0, 0]
        det = jacobian_determinant(displacement)[0]
    return RegistrationResult(
        displacement=displacement[0].cpu(),
        warped=warped.cpu(),
        jacobian_determinant=det.cpu(),
        params=dict(params),
        affine=affine,
    )


def save_nifti(array: torch.Tensor | np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Save a volume as NIfTI atomically (a temporary file renamed into place)."""
    path = Path(path)
    data = array.cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    tmp = path.with_name(f".{path.name}.partial.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), str(tmp))
    os.replace(tmp, path)
    return path


def segmentation_names(paths: Sequence[str | Path]) -> dict[str, str | Path]:
    """Name each moving segmentation by its file name without extensions, the ``<name>`` of the
    ``warped_<name>.nii.gz`` that :func:`write_result` writes for it."""
    return {Path(p).name.split(".")[0]: p for p in paths}


def write_result(
    result: RegistrationResult,
    out_dir: str | Path,
    *,
    segmentations: Mapping[str, ImageLike] | None = None,
) -> list[Path]:
    """Write ``disp.nii.gz`` (Learn2Reg convention ``(*spatial, D)``), ``warped.nii.gz``,
    ``jacdet.nii.gz`` and ``warped_<name>.nii.gz`` for each moving segmentation (nearest
    neighbour). Returns the written paths."""
    labels = {name: read_image(seg)[0] for name, seg in (segmentations or {}).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    disp = result.displacement.movedim(0, -1).contiguous()
    written = [
        save_nifti(disp, result.affine, out / "disp.nii.gz"),
        save_nifti(result.warped, result.affine, out / "warped.nii.gz"),
        save_nifti(result.jacobian_determinant, result.affine, out / "jacdet.nii.gz"),
    ]
    for name, label_map in labels.items():
        warped = warp(label_map[None, None], result.displacement[None], mode="nearest")[0, 0]
        written.append(
            save_nifti(warped.round().to(torch.int16), result.affine, out / f"warped_{name}.nii.gz")
        )
    return written
