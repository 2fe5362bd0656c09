"""Regularization energies as plain functions.

Every function takes a displacement ``u`` of shape ``(B, D, *spatial)`` (voxels, fixed grid,
channel ``k`` along array axis ``k``; ``D`` = 2 or 3) and returns the energy per batch element,
``(B,)``: the mean over the domain of a pointwise density. Parameters are floats, tensors
``(B,)`` (one value per batch element) or, for the energies with parameters, spatial maps
``(B, 1, *spatial)`` on the field's grid that weight the density pointwise (see
:func:`per_sample` for the point each density value belongs to). Derivatives are forward finite differences on the
interior (see :mod:`regzoo.spatial`). With ``spacing`` given, ``u`` is converted to physical
units (``u_k * spacing_k``) and derivatives are taken per physical unit.
"""

from __future__ import annotations

import torch

from regzoo.spatial import (
    Spacing,
    check_field,
    gradient,
    hessian,
    jacobian_determinant,
    laplacian,
    spacing_tensor,
)

__all__ = [
    "bending_energy",
    "curvature_energy",
    "diffusion_energy",
    "domain_mean",
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


def per_sample(
    value: Param, density: torch.Tensor, name: str, caller: str, *, offset: int = 0
) -> torch.Tensor:
    """Broadcast a parameter against a density ``(B, *interior)``.

    The parameter is a float, a tensor ``(B,)`` or a spatial map ``(B, 1, *spatial)`` on the
    field's grid. A map is cropped to the interior points where the density lives: along every
    axis it starts at voxel ``offset`` and has the density's size. For forward differences
    (first-order energies, :func:`regzoo.spatial.gradient`, second forward differences) the
    density at point ``x`` is built from ``u(x)`` and its forward neighbours, so ``offset=0``
    weights it by the map at ``x``; for centred second differences
    (:func:`regzoo.spatial.laplacian`) the density at ``x`` lies one voxel in, ``offset=1``.

    Raises:
        ValueError: naming ``caller`` and ``name`` for a tensor of another shape.
    """
    tensor = torch.as_tensor(value, dtype=density.dtype, device=density.device)
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


def domain_mean(density: torch.Tensor) -> torch.Tensor:
    """The mean of a density ``(B, *spatial)`` over the domain, per batch element ``(B,)``."""
    return density.flatten(1).mean(dim=1)


def diffusion_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Diffusion: ``mean_x sum_ij (d_i u_j)^2 = mean |grad u|^2``."""
    check_field(u, "diffusion_energy")
    jac = gradient(to_physical(u, spacing), spacing)
    return domain_mean(jac.pow(2).sum(dim=(1, 2)))


def linear_elastic_energy(
    u: torch.Tensor, lam: Param, mu: Param, spacing: Spacing = None
) -> torch.Tensor:
    """Linear elasticity (Broit; the paper's Eq. 2).

    ``mean_x( mu/4 * sum_ij (d_i u_j + d_j u_i)^2 + lam/2 * (div u)^2 )``. ``lam`` and ``mu``
    may be maps ``(B, 1, *spatial)``: the density at the interior point ``x`` (forward
    differences from ``x``) is weighted by ``lam(x)`` and ``mu(x)``.
    """
    check_field(u, "linear_elastic_energy")
    jac = gradient(to_physical(u, spacing), spacing)  # [:, j, i] = d_i u_j
    strain = jac + jac.transpose(1, 2)
    shear = strain.pow(2).sum(dim=(1, 2))
    divergence = torch.diagonal(jac, dim1=1, dim2=2).sum(dim=-1)
    mu_t = per_sample(mu, shear, "mu", "linear_elastic_energy")
    lam_t = per_sample(lam, shear, "lam", "linear_elastic_energy")
    return domain_mean(mu_t / 4 * shear + lam_t / 2 * divergence.pow(2))


def bending_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Bending energy (thin-plate): ``mean_x sum_k sum_ij (d_i d_j u_k)^2``."""
    check_field(u, "bending_energy")
    return domain_mean(hessian(to_physical(u, spacing), spacing).pow(2).sum(dim=(1, 2, 3)))


def curvature_energy(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Curvature (Fischer-Modersitzki): ``mean_x sum_k (Laplacian u_k)^2``.

    The Laplacian uses centred second differences (``d+ d-`` along each axis at the same
    point, :func:`regzoo.spatial.laplacian`), so no non-constant field except the discrete
    harmonic ones has zero energy.
    """
    check_field(u, "curvature_energy")
    return domain_mean(laplacian(to_physical(u, spacing), spacing).pow(2).sum(dim=1))


def total_variation_energy(
    u: torch.Tensor, eps: Param = 1e-3, spacing: Spacing = None
) -> torch.Tensor:
    """Isotropic total variation, Charbonnier-smoothed: ``mean_x sqrt(|grad u|^2 + eps^2) - eps``.

    Subtracting ``eps`` makes the energy of a constant field exactly zero. ``eps`` may be a
    map ``(B, 1, *spatial)``, taken at the point where the forward differences start. The density is
    evaluated as ``s / (sqrt(s + eps^2) + eps)`` with ``s = |grad u|^2`` (the same value, with
    no cancellation, so never negative), and the root's argument is kept above the smallest
    normal number: pure TV (``eps = 0``) has a finite (zero) gradient where ``grad u = 0``.
    """
    check_field(u, "total_variation_energy")
    squared = gradient(to_physical(u, spacing), spacing).pow(2).sum(dim=(1, 2))
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
    (incompressibility), the second penalises folded (negative-determinant) voxels. The
    weights may be maps ``(B, 1, *spatial)``, taken at the point where the forward differences
    of ``J`` start.
    """
    check_field(u, "jacobian_energy")
    det = jacobian_determinant(u, pad=False)
    log_det = torch.log(det.clamp_min(min_det))
    vol = per_sample(volume_weight, det, "volume_weight", "jacobian_energy")
    fold = per_sample(folding_weight, det, "folding_weight", "jacobian_energy")
    return domain_mean(vol * log_det.pow(2) + fold * torch.relu(-det))
