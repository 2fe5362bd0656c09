"""Regularization energies as plain functions.

Every function takes a displacement ``u`` of shape ``(B, D, *spatial)`` (voxels, fixed grid,
channel ``k`` along array axis ``k``; ``D`` = 2 or 3) and returns the energy per batch element,
``(B,)``: the mean over the domain of a pointwise density. Parameters are floats, tensors
``(B,)`` (one value per batch element) or spatial maps ``(B, 1, *spatial)`` on the field's grid
(tissue-specific parameters; see :func:`per_sample` for where a map is read). Derivatives are forward finite differences on the
interior (see :mod:`regzoo.spatial`). With ``spacing`` given, ``u`` is converted to physical
units (``u_k * spacing_k``) and derivatives are taken per physical unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from regzoo.spatial import (
    Spacing,
    check_field,
    differences,
    jacobian_determinant,
    laplacian,
    partials,
    spacing_tensor,
)

__all__ = [
    "bending_energy",
    "curvature_energy",
    "diffusion_energy",
    "domain_mean",
    "is_map",
    "jacobian_energy",
    "linear_elastic_energy",
    "per_sample",
    "to_physical",
    "total_variation_energy",
]

Param = float | torch.Tensor


def to_physical(u: torch.Tensor, spacing: Spacing) -> torch.Tensor:
    """A displacement in voxels ``(B, D, *spatial)`` in physical units (``u_k * spacing_k``).

    With ``spacing=None`` ``u`` is returned as is. Pass the result and the same ``spacing`` to
    :func:`regzoo.spatial.gradient` for derivatives per physical unit.
    """
    step = spacing_tensor(spacing, u.shape[1], u)
    return u if step is None else u * step.view(1, -1, *([1] * (u.ndim - 2)))


def is_map(value: Param) -> bool:
    """Whether a parameter value is a spatial map ``(B, 1, *spatial)`` (not a float or ``(B,)``)."""
    return isinstance(value, torch.Tensor) and value.ndim > 1


def per_sample(
    value: Param, density: torch.Tensor, name: str, caller: str, *, offset: int = 0
) -> Param:
    """Broadcast a parameter against a density ``(B, *interior)`` (or per-sample means ``(B,)``).

    The parameter is a float (returned as a Python number: making it a tensor on the density's
    device would be a host-to-device copy in every training step), a tensor ``(B,)`` or a
    spatial map ``(B, 1, *spatial)`` on the field's grid. A map is cropped to the interior
    points where the density lives: along every axis it starts at voxel ``offset`` and has the
    density's size. For forward differences (first-order energies,
    :func:`regzoo.spatial.gradient`, second forward differences) the density at point ``x`` is
    built from ``u(x)`` and its forward neighbours, so ``offset=0`` weights it by the map at
    ``x``; for centred second differences (:func:`regzoo.spatial.laplacian`) the density at
    ``x`` lies one voxel in, ``offset=1``.

    Raises:
        ValueError: naming ``caller`` and ``name`` for a tensor of another shape.
    """
    if not isinstance(value, torch.Tensor):
        return float(value)
    tensor = value.to(dtype=density.dtype, device=density.device)
    if tensor.ndim == 0:
        return tensor
    batch, interior = density.shape[0], density.shape[1:]
    if tensor.shape == (batch,):
        return tensor.view(-1, *([1] * (density.ndim - 1)))
    if (
        tensor.ndim == density.ndim + 1
        and tensor.shape[:2] == (batch, 1)
        and all(n >= m + offset for n, m in zip(tensor.shape[2:], interior, strict=True))
    ):
        crop = tensor[:, 0]
        for axis, size in enumerate(interior):
            crop = crop.narrow(1 + axis, offset, size)
        return crop
    raise ValueError(
        f"{caller}() parameter '{name}' must be a float, a tensor of shape ({batch},) or a map "
        f"({batch}, 1, *spatial) on the field's grid, got shape {tuple(tensor.shape)}"
    )


def _uniform(value: Param) -> Param:
    """A map that is constant over each sample's domain, as that per-sample value ``(B,)``.

    Spatially constant parameters then take the same (fused) path as per-sample ones, so a
    constant map gives exactly the scalar energy.
    """
    if not isinstance(value, torch.Tensor) or not is_map(value):
        return value
    flat = value.flatten(1)
    return flat[:, 0] if bool((flat == flat[:, :1]).all()) else value


def domain_mean(density: torch.Tensor) -> torch.Tensor:
    """The mean of a density ``(B, *spatial)`` over the domain, per batch element ``(B,)``."""
    return density.flatten(1).mean(dim=1)


# The energies are fused: they combine the per-axis differences of regzoo.spatial.differences
# directly (no stacked Jacobian or Hessian, only the unique second differences, scalar and
# per-sample parameters applied to per-sample means), so forward and backward touch a fraction
# of the memory of the textbook forms built on regzoo.spatial.gradient / hessian (the tests'
# reference). Spatial parameter maps weight the pointwise density instead.


def _sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of tensors, as ``sum()`` computes it (typed: never the integer 0)."""
    iterator = iter(terms)
    total = next(iterator)
    for term in iterator:
        total = total + term
    return total


def _mean_square(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``mean_x sum_c t_c(x)^2`` per batch element; the last ``ndim`` axes are the domain."""
    voxels = math.prod(t.shape[-ndim:])
    return t.square().flatten(1).sum(dim=1) / voxels


def _second_differences(u: torch.Tensor, spacing: Spacing) -> dict[tuple[int, int], torch.Tensor]:
    """The unique second forward differences ``d_i d_j u`` (``i <= j``), ``(B, C, *(s - 2))``.

    ``d_i d_j u = d_j d_i u`` exactly (the differences commute), as in
    :func:`regzoo.spatial.hessian`, whose symmetric entries are computed twice.
    """
    second = {}
    for j, dj in enumerate(differences(u, spacing)):
        for i, dij in enumerate(differences(dj, spacing, axes=range(j + 1))):
            second[i, j] = dij
    return second


def diffusion_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Diffusion: ``mean_x sum_ij (d_i u_j)^2 = mean |grad u|^2``."""
    check_field(u, "diffusion_energy")
    ndim = u.shape[1]
    return _sum(_mean_square(d, ndim) for d in differences(to_physical(u, spacing), spacing))


def linear_elastic_energy(
    u: torch.Tensor, lam: Param, mu: Param, spacing: Spacing = None
) -> torch.Tensor:
    """Linear elasticity (Broit; the paper's Eq. 2).

    ``mean_x( mu/4 * sum_ij (d_i u_j + d_j u_i)^2 + lam/2 * (div u)^2 )``. ``lam`` and ``mu``
    may be maps ``(B, 1, *spatial)``: the density at the interior point ``x`` (forward
    differences from ``x``) is weighted by ``lam(x)`` and ``mu(x)``.
    """
    check_field(u, "linear_elastic_energy")
    lam, mu = _uniform(lam), _uniform(mu)
    d = partials(to_physical(u, spacing), spacing)  # d[j][i] = d_i u_j
    ndim = len(d)
    diagonal = [d[i][i] for i in range(ndim)]
    off_diagonal = [d[j][i] + d[i][j] for i in range(ndim) for j in range(i + 1, ndim)]
    divergence = _sum(diagonal)
    if is_map(lam) or is_map(mu):
        # sum_ij (d_i u_j + d_j u_i)^2 = 4 sum_i (d_i u_i)^2 + 2 sum_{i<j} (d_i u_j + d_j u_i)^2
        shear = 4 * _sum(t.square() for t in diagonal) + 2 * _sum(
            t.square() for t in off_diagonal
        )
        mu_t = per_sample(mu, shear, "mu", "linear_elastic_energy")
        lam_t = per_sample(lam, shear, "lam", "linear_elastic_energy")
        return domain_mean(mu_t / 4 * shear + lam_t / 2 * divergence.square())
    shear = 4 * _sum(_mean_square(t, ndim) for t in diagonal)
    if off_diagonal:
        shear = shear + 2 * _sum(_mean_square(t, ndim) for t in off_diagonal)
    mu_t = per_sample(mu, shear, "mu", "linear_elastic_energy")
    lam_t = per_sample(lam, shear, "lam", "linear_elastic_energy")
    return mu_t / 4 * shear + lam_t / 2 * _mean_square(divergence, ndim)


def bending_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Bending energy (thin-plate): ``mean_x sum_k sum_ij (d_i d_j u_k)^2``."""
    check_field(u, "bending_energy")
    ndim = u.shape[1]
    second = _second_differences(to_physical(u, spacing), spacing)
    # d_i d_j = d_j d_i: each mixed derivative counts twice
    return _sum((1 if i == j else 2) * _mean_square(h, ndim) for (i, j), h in second.items())


def curvature_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Curvature (Fischer-Modersitzki): ``mean_x sum_k (Laplacian u_k)^2``.

    The Laplacian uses centred second differences (``d+ d-`` along each axis at the same
    point, :func:`regzoo.spatial.laplacian`), so no non-constant field except the discrete
    harmonic ones has zero energy.
    """
    check_field(u, "curvature_energy")
    return _mean_square(laplacian(to_physical(u, spacing), spacing), u.shape[1])


def total_variation_energy(
    u: torch.Tensor, eps: Param = 1e-3, spacing: Spacing = None
) -> torch.Tensor:
    """Isotropic total variation, Charbonnier-smoothed: ``mean_x sqrt(|grad u|^2 + eps^2) - eps``.

    Subtracting ``eps`` makes the energy of a constant field exactly zero. The density is
    evaluated as ``s / (sqrt(s + eps^2) + eps)`` with ``s = |grad u|^2`` (the same value, with
    no cancellation, so never negative), and the root's argument is kept above the smallest
    normal number: pure TV (``eps = 0``) has a finite (zero) gradient where ``grad u = 0``.
    ``eps`` may be a map (read at the forward differences' points).
    """
    check_field(u, "total_variation_energy")
    squared = _sum(d.square().sum(dim=1) for d in differences(to_physical(u, spacing), spacing))
    eps_t = per_sample(eps, squared, "eps", "total_variation_energy")
    tiny = torch.finfo(squared.dtype).tiny
    root = torch.sqrt((squared + eps_t**2).clamp_min(tiny))
    return domain_mean(squared / (root + eps_t))


def jacobian_energy(
    u: torch.Tensor,
    volume_weight: Param = 1.0,
    folding_weight: Param = 1.0,
    *,
    min_det: float = 1e-3,
) -> torch.Tensor:
    """Jacobian-determinant penalty: local volume change and folding.

    ``mean_x( volume_weight * (log max(det J, min_det))^2 + folding_weight * relu(-det J) )``
    with ``J = I + grad u``. The first term favours local volume preservation
    (incompressibility), the second penalises folded (negative-determinant) voxels. The weights
    may be maps (read at the forward differences' points).
    """
    check_field(u, "jacobian_energy")
    det = jacobian_determinant(u, pad=False)
    log_det = torch.log(det.clamp_min(min_det))
    vol = per_sample(volume_weight, det, "volume_weight", "jacobian_energy")
    fold = per_sample(folding_weight, det, "folding_weight", "jacobian_energy")
    return domain_mean(vol * log_det.pow(2) + fold * torch.relu(-det))
