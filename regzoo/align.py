"""Pre-alignment: a rigid or affine stage before the deformable one.

[`align`][regzoo.align.align] finds the linear map that best aligns a moving image with a fixed image on the same
grid, under a similarity (the model's, in [`register`][regzoo.inference.register]), by Adam on a
three-level image pyramid (images 4, 2 and 1 times coarser). The map is parameterised in
physical space (mm, along the array axes) around the fixed image's centre:

``y = A (x - c) + c + t`` with ``A = R`` (rigid: rotation ``R`` as an axis-angle vector in 3D, an
angle in 2D) or ``A = R · diag(exp(s)) · (I + H)`` (affine: log-scales ``s`` and an upper
triangular shear ``H``), ``c`` the centre and ``t`` the translation, started from the images'
centres of mass. The result is a displacement in voxels on the fixed grid (``fixed voxel i ->
moving voxel i + u(i)``), the convention of every field in regzoo.

The deformable stage then registers the fixed image with the moving image warped by it;
[`compose`][regzoo.align.compose] gives the total field, exactly: ``u(x) = u_a(x) + A_vox u_d(x)``, the affine map
applied after the deformable one ([`Alignment`][regzoo.align.Alignment] holds ``A_vox``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regzoo._errors import InputError
from regzoo.spatial import warp

__all__ = ["ALIGN_KINDS", "Alignment", "align", "check_align", "compose"]

ALIGN_KINDS = ("rigid", "affine")
"""The pre-alignment stages [`align`][regzoo.align.align] runs (``None`` or ``"none"``: no pre-alignment)."""

LEVELS = (4, 2, 1)
"""Downsampling factor of each pyramid level, coarsest first."""


def check_align(kind: str | None) -> str | None:
    """The one check of a pre-alignment option (``register --rigid/--affine``, the config's
    ``align``, ``register(align=...)``): ``None``/``"none"`` -> ``None``.

    Raises:
        InputError: an unknown kind.
    """
    if kind is None or kind == "none":
        return None
    if kind not in ALIGN_KINDS:
        raise InputError(f"align must be one of none, {', '.join(ALIGN_KINDS)}; got {kind!r}")
    return kind


@dataclass
class Alignment:
    """A pre-alignment's result.

    Attributes:
        kind: ``"rigid"`` or ``"affine"``.
        displacement: ``(1, D, *spatial)`` voxels on the fixed grid.
        voxel_matrix: ``(D+1, D+1)`` homogeneous map fixed voxel index -> moving voxel index.
        loss: the similarity at the end, at full resolution.
        initial_loss: the similarity before alignment (the identity), at full resolution.
    """

    kind: str
    displacement: torch.Tensor
    voxel_matrix: torch.Tensor
    loss: float
    initial_loss: float

    def record(self, affine: np.ndarray) -> dict[str, Any]:
        """The JSON record of the map: the voxel matrix, and the same map in world (RAS mm)
        coordinates of the fixed image's ``affine`` (fixed point -> moving point)."""
        ndim = self.voxel_matrix.shape[0] - 1
        vox = np.eye(4)
        m = self.voxel_matrix.double().cpu().numpy()
        vox[:ndim, :ndim] = m[:ndim, :ndim]
        vox[:ndim, 3] = m[:ndim, ndim]
        world = np.asarray(affine, dtype=np.float64) @ vox @ np.linalg.inv(affine)
        return {
            "kind": self.kind,
            "voxel_matrix": m.tolist(),
            "world_matrix_ras": world.tolist(),
            "similarity_before": self.initial_loss,
            "similarity_after": self.loss,
        }


def _rotation(vector: torch.Tensor, ndim: int) -> torch.Tensor:
    """A rotation matrix from an angle (2D) or an axis-angle vector (3D), differentiable."""
    if ndim == 2:
        c, s = torch.cos(vector[0]), torch.sin(vector[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    x, y, z = vector
    zero = torch.zeros_like(x)
    skew = torch.stack(
        [torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])]
    )
    return torch.linalg.matrix_exp(skew)


def _linear(params: dict[str, torch.Tensor], ndim: int) -> torch.Tensor:
    """``A = R · diag(exp(s)) · (I + H)`` (rigid: ``R``)."""
    matrix = _rotation(params["rotation"], ndim)
    if "log_scale" in params:
        shear = torch.zeros(ndim, ndim, dtype=matrix.dtype)
        rows, cols = torch.triu_indices(ndim, ndim, offset=1)
        shear = shear.index_put((rows, cols), params["shear"])
        eye = torch.eye(ndim, dtype=matrix.dtype)
        matrix = matrix @ torch.diag(torch.exp(params["log_scale"])) @ (eye + shear)
    return matrix


def _voxel_matrix(
    params: dict[str, torch.Tensor], spacing: torch.Tensor, centre: torch.Tensor
) -> torch.Tensor:
    """The homogeneous map fixed voxel -> moving voxel of ``y = A (x - c) + c + t`` (mm)."""
    ndim = spacing.shape[0]
    linear = _linear(params, ndim)
    scale = torch.diag(spacing)
    inverse = torch.diag(1.0 / spacing)
    top = inverse @ linear @ scale
    offset = inverse @ (centre + params["translation"] - linear @ centre)
    bottom = torch.zeros(1, ndim + 1, dtype=spacing.dtype)
    bottom[0, ndim] = 1.0
    return torch.cat([torch.cat([top, offset[:, None]], 1), bottom], 0)


def _field(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The displacement ``(1, D, *shape)`` in voxels of a homogeneous voxel map."""
    ndim = len(shape)
    axes = [torch.arange(n, dtype=matrix.dtype) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (D, *shape)
    flat = grid.reshape(ndim, -1)
    mapped = matrix[:ndim, :ndim] @ flat + matrix[:ndim, ndim : ndim + 1]
    return (mapped - flat).reshape(1, ndim, *shape).float()


def _centre_of_mass(image: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """The intensity-weighted centre ``(D,)`` in mm of an image ``(1, 1, *spatial)``."""
    weights = image[0, 0].double().clamp_min(0)
    total = weights.sum().clamp_min(1e-12)
    centre = [
        (weights.sum(dim=[d for d in range(weights.ndim) if d != axis]) * torch.arange(n)).sum()
        / total
        for axis, n in enumerate(weights.shape)
    ]
    return torch.stack(centre) * spacing


def _pooled(image: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return image
    pool = F.avg_pool2d if image.ndim == 4 else F.avg_pool3d
    return pool(image, factor, ceil_mode=True)


def align(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    spacing: Sequence[float],
    kind: str = "affine",
    steps: Sequence[int] = (80, 40, 20),
    lr: float = 0.05,
) -> Alignment:
    """Find the rigid or affine map that aligns ``moving`` with ``fixed`` (same grid).

    A rigid stage runs first; ``kind="affine"`` then adds scales and shears, started from it.
    Each stage runs Adam on the pyramid of [`LEVELS`][regzoo.align.LEVELS] (``steps`` iterations per level,
    coarsest first) and keeps the parameters of the lowest loss at full resolution (the
    identity included: alignment never makes a pair worse under the similarity).

    Args:
        fixed: normalised fixed image ``(1, 1, *spatial)``.
        moving: normalised moving image on the same grid.
        similarity: ``(fixed, warped) -> (B,)`` loss, lower is better (the model's).
        spacing: voxel size along each array axis, mm.
        kind: ``"rigid"`` or ``"affine"``.
        steps: Adam iterations per pyramid level, coarsest first.
        lr: Adam learning rate of the rotation (radians), log-scales and shears; the
            translation's is ``lr`` times a tenth of the image's extent (mm).

    Raises:
        InputError: an unknown ``kind``, or images that are not one 2D or 3D pair on one grid.
    """
    checked = check_align(kind)
    if checked is None:
        raise InputError("align(): kind must be rigid or affine")
    if fixed.shape != moving.shape or fixed.ndim not in (4, 5) or fixed.shape[:2] != (1, 1):
        raise InputError(
            "pre-alignment needs one fixed and one moving image of the same dimension and "
            f"shape, got {tuple(fixed.shape[2:])} and {tuple(moving.shape[2:])}"
        )
    ndim = fixed.ndim - 2
    if len(spacing) != ndim:
        raise InputError(f"pre-alignment: spacing {tuple(spacing)} is not {ndim}D")
    dtype = torch.float64
    device = fixed.device
    space = torch.tensor([float(s) for s in spacing], dtype=dtype)
    shape = tuple(fixed.shape[2:])
    centre = space * torch.tensor([(n - 1) / 2 for n in shape], dtype=dtype)
    extent = float((space * torch.tensor(shape, dtype=dtype)).max())
    params: dict[str, torch.Tensor] = {
        "rotation": torch.zeros(1 if ndim == 2 else 3, dtype=dtype),
        "translation": _centre_of_mass(moving.cpu(), space) - _centre_of_mass(fixed.cpu(), space),
    }

    def loss_at(
        values: dict[str, torch.Tensor], level_fixed: torch.Tensor, factor: int
    ) -> torch.Tensor:
        level_moving = _pooled(moving, factor)
        matrix = _voxel_matrix(values, space, centre)
        # the map on the coarse grid: coarse voxel j is fine voxel factor * j
        to_fine = torch.diag(torch.tensor([float(factor)] * ndim + [1.0], dtype=dtype))
        to_coarse = torch.diag(torch.tensor([1.0 / factor] * ndim + [1.0], dtype=dtype))
        coarse = to_coarse @ matrix @ to_fine
        field = _field(coarse, level_fixed.shape[2:]).to(device)
        return similarity(level_fixed, warp(level_moving, field)).mean()

    def full_loss(values: dict[str, torch.Tensor]) -> float:
        with torch.no_grad():
            return float(loss_at(values, fixed, 1))

    identity = {
        "rotation": torch.zeros_like(params["rotation"]),
        "translation": torch.zeros(ndim, dtype=dtype),
    }
    initial = full_loss(identity)
    best, best_loss = dict(identity), initial
    stages = ["rigid"] if checked == "rigid" else ["rigid", "affine"]
    for stage in stages:
        if stage == "affine":
            params = {k: v.detach().clone() for k, v in best.items()}
            params["log_scale"] = torch.zeros(ndim, dtype=dtype)
            params["shear"] = torch.zeros(ndim * (ndim - 1) // 2, dtype=dtype)
        unknowns = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        groups = [
            {"params": [v], "lr": lr * (extent / 10 if k == "translation" else 1.0)}
            for k, v in unknowns.items()
        ]
        optimizer = torch.optim.Adam(groups)
        with torch.enable_grad():
            for factor, count in zip(LEVELS, steps, strict=True):
                level_fixed = _pooled(fixed, factor)
                for _ in range(count):
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_at(unknowns, level_fixed, factor)
                    loss.backward()
                    optimizer.step()
        params = {k: v.detach() for k, v in unknowns.items()}
        value = full_loss(params)
        if value < best_loss:
            best, best_loss = params, value
    matrix = _voxel_matrix(best, space, centre)
    return Alignment(
        kind=checked,
        displacement=_field(matrix, shape).to(device),
        voxel_matrix=matrix.float(),
        loss=best_loss,
        initial_loss=initial,
    )


def compose(alignment: Alignment, deformable: torch.Tensor) -> torch.Tensor:
    """The total displacement of the affine map applied after the deformable one:
    ``u(x) = u_a(x) + A_vox u_d(x)`` (exact, the affine part is linear), ``(B, D, *spatial)``
    voxels on the fixed grid; ``deformable`` registers the fixed image with the moving image
    warped by ``alignment.displacement``."""
    ndim = deformable.shape[1]
    linear = alignment.voxel_matrix[:ndim, :ndim].to(deformable)
    turned = torch.einsum("ij,bj...->bi...", linear, deformable)
    return alignment.displacement.to(deformable) + turned
