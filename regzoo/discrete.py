"""A discrete initialisation: the displacement found by search, before any gradient step.

ConvexAdam (Siebert, Hansen, Heinrich, "Fast 3D registration with accurate optimisation and
little learning for Learn2Reg 2021") starts instance optimisation from a displacement that no
gradient method needs to reach: on a coarse grid, every displacement within a search radius is
scored by the squared difference of MIND-SSC descriptors (a correlation volume), and a coupled
convex optimisation makes the choice smooth.
[`discrete_displacement`][regzoo.discrete.discrete_displacement] is that first stage,
for any [`DescriptorSimilarity`][regzoo.similarity.descriptor.DescriptorSimilarity], in 2D and 3D:

1. descriptors of both images, averaged over blocks of ``grid^D`` voxels (the coarse grid);
2. for each displacement ``d`` in ``{-radius..radius}^D`` coarse voxels, the cost
   ``C(x, d) = sum_k (F_k(x) - M_k(x + d))^2``, averaged twice over 3^D neighbourhoods;
3. coupled convex optimisation (Heinrich, Papiez, Schnabel, Handels, "Non-parametric
   discrete registration with convex optimisation", WBIR 2014, as in ConvexAdam; a
   quadratic-penalty splitting, not a primal-dual scheme): ``u = argmin_d C(x, d) +
   theta |d - v(x)|^2`` (an exhaustive search over the displacements), ``v`` = ``u`` averaged
   over 3^D neighbourhoods, for ``theta`` rising over ``coupling`` (ConvexAdam's
   ``0.003 .. 1``);
4. ``v`` upsampled to the image grid (linear, in voxels of the image).

It pays where the start is far from the answer: without a trained network, or for motion
larger than the network's capture range. Refinement then starts from it
(``refine(..., init=RegistrationOutput(displacement))``; a diffeomorphic model refines a
velocity and starts from this displacement as its velocity, the small-deformation
approximation); on the phantom the network's field is the better start (docs/results.md,
issue 23).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from regzoo._errors import InputError
from regzoo.similarity import MINDSSC, DescriptorSimilarity
from regzoo.spatial import check_image

__all__ = ["COUPLING", "discrete_displacement"]

COUPLING = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""ConvexAdam's coupling weights ``theta``, in cost units per squared coarse voxel."""


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """Average over 3^D neighbourhoods (in-domain voxels only at the border)."""
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, 3, stride=1, padding=1, count_include_pad=False)


def _block_mean(x: torch.Tensor, grid: int) -> torch.Tensor:
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, grid, stride=grid, ceil_mode=True)


def discrete_displacement(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    grid: int = 4,
    radius: int = 4,
    descriptor: DescriptorSimilarity | None = None,
    coupling: Sequence[float] = COUPLING,
) -> torch.Tensor:
    """The displacement ``(B, D, *spatial)`` (voxels) of a search over a correlation volume.

    Args:
        fixed: fixed images ``(B, C, *spatial)``, 2D or 3D.
        moving: moving images, same shape.
        grid: side of the coarse grid's blocks, in voxels.
        radius: search radius in coarse voxels: displacements up to ``grid * radius`` voxels
            along each axis, ``(2 radius + 1)^D`` of them per coarse voxel.
        descriptor: the descriptors compared (default: MIND-SSC, radius 1, dilation 2).
        coupling: the rising weights ``theta`` of the coupled convex optimisation (empty: the
            smoothed argmin of the cost alone).

    Returns:
        The displacement on the fixed grid, ``moving(x + u(x)) ~ fixed(x)``, detached.

    Raises:
        InputError: mismatched shapes, ``grid`` or ``radius`` below 1, a negative coupling.
    """
    ndim = check_image(fixed, "discrete_displacement", name="fixed")
    if moving.shape != fixed.shape:
        raise InputError(
            f"discrete_displacement(): 'moving' {tuple(moving.shape)} and 'fixed' "
            f"{tuple(fixed.shape)} must have the same shape"
        )
    if grid < 1 or radius < 1:
        raise InputError(
            f"discrete_displacement(): grid and radius must be >= 1, got {grid} and {radius}"
        )
    if any(theta < 0 for theta in coupling):
        raise InputError(f"discrete_displacement(): coupling weights must be >= 0: {coupling}")
    descriptor = MINDSSC() if descriptor is None else descriptor
    with torch.no_grad():
        fixed_features = _block_mean(descriptor.features(fixed.detach()), grid)
        moving_features = _block_mean(descriptor.features(moving.detach()), grid)
        offsets = torch.tensor(
            list(itertools.product(range(-radius, radius + 1), repeat=ndim)),
            dtype=fixed_features.dtype,
            device=fixed_features.device,
        )  # (N, D), coarse voxels
        cost = _correlation_volume(fixed_features, moving_features, radius, offsets)
        soft = _smooth(_displacement_of(cost.argmin(dim=1), offsets))
        for theta in coupling:
            # (B, N, *coarse): |d - v|^2 = |d|^2 - 2 d.v + |v|^2, without a (B, N, D, ...) temporary
            distance = (
                offsets.pow(2).sum(1).view(1, -1, *[1] * ndim)
                - 2 * torch.einsum("nd,bd...->bn...", offsets, soft)
                + soft.pow(2).sum(1, keepdim=True)
            )
            soft = _smooth(_displacement_of((cost + theta * distance).argmin(dim=1), offsets))
        coarse_voxels = soft * grid  # in voxels of the image
        return _upsample(coarse_voxels, fixed.shape[2:], grid)


def _correlation_volume(
    fixed: torch.Tensor, moving: torch.Tensor, radius: int, offsets: torch.Tensor
) -> torch.Tensor:
    """``(B, N, *coarse)``: each offset's descriptor SSD, smoothed twice over 3^D."""
    ndim = fixed.ndim - 2
    padded = F.pad(moving, [radius] * (2 * ndim), mode="replicate")
    size = fixed.shape[2:]
    costs = []
    for offset in offsets.long().tolist():
        index = [slice(None), slice(None)]
        index += [slice(radius + d, radius + d + n) for d, n in zip(offset, size, strict=True)]
        ssd = (fixed - padded[tuple(index)]).pow(2).sum(dim=1, keepdim=True)
        costs.append(_smooth(_smooth(ssd)))
    return torch.cat(costs, dim=1)


def _displacement_of(choice: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The offsets chosen per coarse voxel ``(B, *coarse)`` as a field ``(B, D, *coarse)``."""
    return rearrange(offsets[choice], "b ... d -> b d ...")


def _upsample(field: torch.Tensor, size: Sequence[int], grid: int) -> torch.Tensor:
    """A coarse-grid field on the image grid, linear, in image voxels: scaling by ``grid``
    with ``align_corners=False`` puts coarse voxel ``i`` at its block's centre
    ``grid * i + (grid - 1) / 2``; the last, partial blocks are cropped to ``size``."""
    if grid == 1:
        return field
    mode = "bilinear" if field.ndim == 4 else "trilinear"
    full = F.interpolate(field, scale_factor=grid, mode=mode, align_corners=False)
    for axis, n in enumerate(size):
        full = full.narrow(2 + axis, 0, n)
    return full
