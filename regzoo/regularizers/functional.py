"""Regularization energies as plain functions.

Every function takes a displacement ``u`` of shape ``(B, D, *spatial)`` (voxels, fixed grid,
channel ``k`` along array axis ``k``; ``D`` = 2 or 3) and returns the energy per batch element,
``(B,)``: the mean over the domain of a pointwise density. Parameters are floats or tensors
``(B,)`` (one value per batch element). Derivatives are forward finite differences on the
interior (see :mod:`regzoo.spatial`). With ``spacing`` given, ``u`` is converted to physical
units (``u_k * spacing_k``) and derivatives are taken per physical unit.
"""

from __future__ import annotations

import math

import torch

from regzoo.spatial import (
    Spacing,
    check_field,
    differences,
    jacobian_determinant,
    partials,
    spacing_tensor,
)

__all__ = [
    "bending_energy",
    "curvature_energy",
    "diffusion_energy",
    "jacobian_energy",
    "linear_elastic_energy",
    "total_variation_energy",
]

Param = float | torch.Tensor


def _physical(u: torch.Tensor, spacing: Spacing) -> torch.Tensor:
    step = spacing_tensor(spacing, u.shape[1], u)
    return u if step is None else u * step.view(1, -1, *([1] * (u.ndim - 2)))


def _per_sample(value: Param, density: torch.Tensor, name: str, caller: str) -> Param:
    """Broadcast a parameter (float or ``(B,)``) against a density ``(B, *spatial)``.

    A float stays a Python number: turning it into a tensor on the density's device would be a
    host-to-device copy (and on a GPU a synchronisation) in the middle of every training step.
    """
    if not isinstance(value, torch.Tensor):
        return float(value)
    tensor = value.to(dtype=density.dtype, device=density.device)
    if tensor.ndim == 0:
        return tensor
    if tensor.shape != (density.shape[0],):
        raise ValueError(
            f"{caller}() parameter '{name}' must be a float or a tensor of shape "
            f"({density.shape[0]},), got shape {tuple(tensor.shape)}"
        )
    return tensor.view(-1, *([1] * (density.ndim - 1)))


def _domain_mean(density: torch.Tensor) -> torch.Tensor:
    return density.flatten(1).mean(dim=1)


# The energies are fused: they combine the per-axis differences of regzoo.spatial.differences
# directly (no stacked Jacobian or Hessian, only the unique second differences, parameters
# applied to per-sample means), so forward and backward touch a fraction of the memory of the
# textbook forms built on regzoo.spatial.gradient / hessian (the tests' reference).


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
    return sum(_mean_square(d, ndim) for d in differences(_physical(u, spacing), spacing))


def linear_elastic_energy(
    u: torch.Tensor, lam: Param, mu: Param, spacing: Spacing = None
) -> torch.Tensor:
    """Linear elasticity (Broit; the paper's Eq. 2).

    ``mean_x( mu/4 * sum_ij (d_i u_j + d_j u_i)^2 + lam/2 * (div u)^2 )``.
    """
    check_field(u, "linear_elastic_energy")
    d = partials(_physical(u, spacing), spacing)  # d[j][i] = d_i u_j
    ndim = len(d)
    # sum_ij (d_i u_j + d_j u_i)^2 = 4 sum_i (d_i u_i)^2 + 2 sum_{i<j} (d_i u_j + d_j u_i)^2
    shear = 4 * sum(_mean_square(d[i][i], ndim) for i in range(ndim))
    shear = shear + 2 * sum(
        _mean_square(d[j][i] + d[i][j], ndim) for i in range(ndim) for j in range(i + 1, ndim)
    )
    divergence = _mean_square(sum(d[i][i] for i in range(ndim)), ndim)
    mu_t = _per_sample(mu, shear, "mu", "linear_elastic_energy")
    lam_t = _per_sample(lam, shear, "lam", "linear_elastic_energy")
    return mu_t / 4 * shear + lam_t / 2 * divergence


def bending_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Bending energy (thin-plate): ``mean_x sum_k sum_ij (d_i d_j u_k)^2``."""
    check_field(u, "bending_energy")
    ndim = u.shape[1]
    second = _second_differences(_physical(u, spacing), spacing)
    # d_i d_j = d_j d_i: each mixed derivative counts twice
    return sum((1 if i == j else 2) * _mean_square(h, ndim) for (i, j), h in second.items())


def curvature_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Curvature (Fischer-Modersitzki): ``mean_x sum_k (Laplacian u_k)^2``."""
    check_field(u, "curvature_energy")
    second = _second_differences(_physical(u, spacing), spacing)
    return _mean_square(sum(h for (i, j), h in second.items() if i == j), u.shape[1])


def total_variation_energy(
    u: torch.Tensor, eps: Param = 1e-3, spacing: Spacing = None
) -> torch.Tensor:
    """Isotropic total variation, Charbonnier-smoothed: ``mean_x sqrt(|grad u|^2 + eps^2) - eps``.

    Subtracting ``eps`` makes the energy of a constant field exactly zero.
    """
    check_field(u, "total_variation_energy")
    squared = sum(d.square().sum(dim=1) for d in differences(_physical(u, spacing), spacing))
    eps_t = _per_sample(eps, squared, "eps", "total_variation_energy")
    return _domain_mean(torch.sqrt(squared + eps_t**2) - eps_t)


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
    (incompressibility), the second penalises folded (negative-determinant) voxels.
    """
    check_field(u, "jacobian_energy")
    det = jacobian_determinant(u, pad=False)
    log_det = torch.log(det.clamp_min(min_det))
    vol = _per_sample(volume_weight, det, "volume_weight", "jacobian_energy")
    fold = _per_sample(folding_weight, det, "folding_weight", "jacobian_energy")
    return _domain_mean(vol * log_det.pow(2) + fold * torch.relu(-det))
