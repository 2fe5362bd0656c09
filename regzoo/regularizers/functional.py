"""Regularization energies as plain functions.

Every function takes a displacement ``u`` of shape ``(B, D, *spatial)`` (voxels, fixed grid,
channel ``k`` along array axis ``k``; ``D`` = 2 or 3) and returns the energy per batch element,
``(B,)``: the mean over the domain of a pointwise density. Parameters are floats, tensors
``(B,)`` (one value per batch element) or spatial maps ``(B, 1, *spatial)`` on the field's grid
(tissue-specific parameters; see [`per_sample`][regzoo.regularizers.functional.per_sample] for where a map is read). First derivatives
are forward differences and the second derivatives of the bending and rigidity terms second
forward differences, on the interior; the curvature energy uses the centred Laplacian and the
sliding energy's interface normals a Gaussian-smoothed region map (see [`regzoo.spatial`][regzoo.spatial]).
With ``spacing`` given, ``u`` is converted to physical units (``u_k * spacing_k``) and
derivatives are taken per physical unit.

The module is long because every energy is here as a plain function with the formula it
implements, sharing the finite-difference helpers; one registered class each lives in
[`regzoo.regularizers.builtin`][regzoo.regularizers.builtin].
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
    "deformation_gradient",
    "diffusion_energy",
    "domain_mean",
    "hyperelastic_energy",
    "interface_normals",
    "is_map",
    "jacobian_energy",
    "linear_elastic_energy",
    "neo_hookean_energy",
    "per_sample",
    "rigidity_energy",
    "sliding_energy",
    "st_venant_kirchhoff_energy",
    "to_physical",
    "total_variation_energy",
    "volume_penalty",
]

Param = float | torch.Tensor


def to_physical(u: torch.Tensor, spacing: Spacing) -> torch.Tensor:
    """A displacement in voxels ``(B, D, *spatial)`` in physical units (``u_k * spacing_k``).

    With ``spacing=None`` ``u`` is returned as is. Pass the result and the same ``spacing`` to
    [`regzoo.spatial.gradient`][regzoo.spatial.gradient] for derivatives per physical unit.
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
    [`regzoo.spatial.gradient`][regzoo.spatial.gradient], second forward differences) the density at
    point ``x`` is built from ``u(x)`` and its forward neighbours, so ``offset=0`` weights it by the
    map at ``x``; for centred second differences
    ([`regzoo.spatial.laplacian`][regzoo.spatial.laplacian]) the density at ``x`` lies one voxel in,
    ``offset=1``.

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
    [`regzoo.spatial.hessian`][regzoo.spatial.hessian], whose symmetric entries are computed twice.
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
        shear = 4 * _sum(t.square() for t in diagonal) + 2 * _sum(t.square() for t in off_diagonal)
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
    point, [`regzoo.spatial.laplacian`][regzoo.spatial.laplacian]), so no non-constant field except
    the discrete harmonic ones has zero energy.
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


# --------------------------------------------------------------------------------------------
# Beyond linear elasticity: large-strain elasticity, hyperelasticity, rigidity, sliding.
#
# The nonlinear energies are built from the deformation gradient F = I + grad u (physical units
# with ``spacing``), entry by entry (no stacked (D, D) matrices, no batched LU): F[j][i] =
# delta_ij + d_i u_j on the interior, the points where the forward differences start.


def _weighted_mean(
    density: torch.Tensor, weight: Param, name: str, caller: str, *, offset: int = 0
) -> torch.Tensor:
    """``mean_x weight(x) density(x)`` per batch element ``(B,)``.

    A float or per-sample weight multiplies the per-sample mean (the fused path); a map weights
    the density pointwise (cropped as in [`per_sample`][regzoo.regularizers.functional.per_sample]).
    """
    if is_map(weight):
        return domain_mean(per_sample(weight, density, name, caller, offset=offset) * density)
    mean = domain_mean(density)
    return per_sample(weight, mean, name, caller) * mean


def deformation_gradient(u: torch.Tensor, spacing: Spacing = None) -> list[list[torch.Tensor]]:
    """``F = I + grad u`` as separate entries ``F[j][i] = delta_ij + d_i u_j``.

    Each entry is ``(B, *(spatial - 1))`` (forward differences,
    [`regzoo.spatial.partials`][regzoo.spatial.partials]); with ``spacing`` the displacement is
    taken in physical units and derivatives per unit, so ``F`` is the physical deformation gradient
    (dimensionless).
    """
    check_field(u, "deformation_gradient")
    d = partials(to_physical(u, spacing), spacing)
    ndim = len(d)
    return [[d[j][i] + 1 if i == j else d[j][i] for i in range(ndim)] for j in range(ndim)]


def _determinant(F: list[list[torch.Tensor]]) -> torch.Tensor:
    if len(F) == 2:
        return F[0][0] * F[1][1] - F[0][1] * F[1][0]
    return (
        F[0][0] * (F[1][1] * F[2][2] - F[1][2] * F[2][1])
        - F[0][1] * (F[1][0] * F[2][2] - F[1][2] * F[2][0])
        + F[0][2] * (F[1][0] * F[2][1] - F[1][1] * F[2][0])
    )


def _cofactor(F: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """``cof F = det(F) F^{-T}`` entry by entry (defined for singular ``F`` too)."""
    if len(F) == 2:
        return [[F[1][1], -F[1][0]], [-F[0][1], F[0][0]]]
    return [
        [
            F[(a + 1) % 3][(b + 1) % 3] * F[(a + 2) % 3][(b + 2) % 3]
            - F[(a + 1) % 3][(b + 2) % 3] * F[(a + 2) % 3][(b + 1) % 3]
            for b in range(3)
        ]
        for a in range(3)
    ]


def _right_cauchy_green(F: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """``C = F^T F``: ``C[i][j] = sum_k F[k][i] F[k][j]`` (only ``i <= j`` computed)."""
    ndim = len(F)
    C: list[list[torch.Tensor]] = [[None] * ndim for _ in range(ndim)]  # type: ignore[list-item]
    for i in range(ndim):
        for j in range(i, ndim):
            C[i][j] = _sum(F[k][i] * F[k][j] for k in range(ndim))
            C[j][i] = C[i][j]
    return C


def _continued(
    value: torch.Tensor, slope: torch.Tensor, det: torch.Tensor, clamped: torch.Tensor
) -> torch.Tensor:
    """A volumetric penalty ``f(J)``, continued below the clamp by its tangent.

    ``value`` and ``slope`` are ``f`` and ``f'`` at ``clamped = max(J, min_det)``; below
    ``min_det`` the result is ``f(min_det) + f'(min_det) (J - min_det)``: finite, C1, and still
    growing as ``J`` decreases through zero into folding (where a plain clamp would have no
    gradient left to unfold the voxel).
    """
    return value + torch.where(det < clamped, slope * (det - clamped), torch.zeros_like(det))


def volume_penalty(det: torch.Tensor, min_det: float = 1e-2) -> torch.Tensor:
    """Burger-Modersitzki-Ruthotto's volume penalty ``psi(J) = ((J - 1)^2 / J)^2``.

    ``psi(1) = 0``, ``psi(J) = psi(1/J)`` (shrinking by a factor costs what growing by it does)
    and ``psi -> inf`` as ``J -> 0``; below ``min_det`` it is continued by its tangent (finite
    for folded voxels, and still decreasing in ``J``).
    """
    clamped = det.clamp_min(min_det)
    ratio = (clamped - 1).square() / clamped
    slope = 2 * (clamped - 1).pow(3) * (clamped + 1) / clamped.pow(3)
    return _continued(ratio.square(), slope, det, clamped)


def hyperelastic_energy(
    u: torch.Tensor,
    length: Param = 1.0,
    area: Param = 1.0,
    volume: Param = 1.0,
    spacing: Spacing = None,
    *,
    min_det: float = 1e-2,
) -> torch.Tensor:
    """Hyperelastic regularization (Burger, Modersitzki, Ruthotto 2013; FAIR's ``hyperElastic``).

    ``mean_x( length/2 |grad u|^2 + area/2 sum_i (|cof(F) e_i|^2 - 1)^2 + volume psi(det F) )``
    with ``F = I + grad u`` and ``psi(J) = ((J - 1)^2 / J)^2``
    ([`volume_penalty`][regzoo.regularizers.functional.volume_penalty]).

    - length: the squared gradient of the displacement (FAIR's length term, quadratic);
    - area: ``|cof(F) e_i|`` is the area ratio of the deformed face with reference normal
      ``e_i`` (Nanson's formula); the double-well penalty of FAIR's default
      ``phiAreaDoubleWell``, on the squared ratio (smooth where a face collapses). In 2D the
      faces are edges;
    - volume: ``psi(det F)``, zero for volume-preserving maps and unbounded as ``det F -> 0``:
      minimisers stay invertible for large motion where linear elasticity folds.

    Translations cost nothing, rigid rotations nothing in the area and volume terms. The weights
    may be maps (read at the forward differences' points).
    """
    check_field(u, "hyperelastic_energy")
    length, area, volume = _uniform(length), _uniform(area), _uniform(volume)
    caller = "hyperelastic_energy"
    F = deformation_gradient(u, spacing)
    ndim = len(F)
    stretch = _sum(
        (F[j][i] - 1 if i == j else F[j][i]).square() for j in range(ndim) for i in range(ndim)
    )
    cof = _cofactor(F)
    faces = _sum((_sum(cof[a][i].square() for a in range(ndim)) - 1).square() for i in range(ndim))
    total = _weighted_mean(stretch / 2, length, "length", caller)
    total = total + _weighted_mean(faces / 2, area, "area", caller)
    return total + _weighted_mean(
        volume_penalty(_determinant(F), min_det), volume, "volume", caller
    )


def st_venant_kirchhoff_energy(
    u: torch.Tensor, lam: Param, mu: Param, spacing: Spacing = None
) -> torch.Tensor:
    """St Venant-Kirchhoff: ``mean_x( lam/2 (tr E)^2 + mu tr(E^2) )``, ``E = (F^T F - I) / 2``.

    Linear elasticity's energy on the Green-Lagrange strain ``E`` instead of the linearised
    strain: invariant to finite rotations, equal to
    [`linear_elastic_energy`][regzoo.regularizers.functional.linear_elastic_energy] (same ``lam``,
    ``mu``) to second order in ``u``. It does not resist compression to zero volume (``F = 0`` costs
    a finite energy). ``lam`` and ``mu`` may be maps.
    """
    check_field(u, "st_venant_kirchhoff_energy")
    lam, mu = _uniform(lam), _uniform(mu)
    C = _right_cauchy_green(deformation_gradient(u, spacing))
    ndim = len(C)
    E = [[(C[i][j] - 1 if i == j else C[i][j]) / 2 for j in range(ndim)] for i in range(ndim)]
    trace = _sum(E[i][i] for i in range(ndim))
    squared = _sum(E[i][j].square() for i in range(ndim) for j in range(ndim))
    caller = "st_venant_kirchhoff_energy"
    return _weighted_mean(trace.square() / 2, lam, "lam", caller) + _weighted_mean(
        squared, mu, "mu", caller
    )


def neo_hookean_energy(
    u: torch.Tensor, lam: Param, mu: Param, spacing: Spacing = None, *, min_det: float = 1e-2
) -> torch.Tensor:
    """Compressible Neo-Hookean: ``mean_x( mu/2 (|F|^2 - D) - mu log J + lam/2 (log J)^2 )``.

    ``F = I + grad u``, ``J = det F``. Invariant to finite rotations, non-negative, and growing
    without bound as ``J -> 0``; to second order in ``u`` it is
    [`linear_elastic_energy`][regzoo.regularizers.functional.linear_elastic_energy] with the same
    ``lam``, ``mu``. Below ``min_det`` (at most ``exp(-D/2)``, so the energy stays non-negative) the
    volumetric part ``-mu log J + lam/2 (log J)^2`` is continued by its tangent: finite and still
    growing for folded voxels. ``lam`` and ``mu`` may be maps.
    """
    check_field(u, "neo_hookean_energy")
    lam, mu = _uniform(lam), _uniform(mu)
    F = deformation_gradient(u, spacing)
    ndim = len(F)
    invariant = _sum(F[j][i].square() for j in range(ndim) for i in range(ndim)) - ndim
    det = _determinant(F)
    clamped = det.clamp_min(min_det)
    log_det = torch.log(clamped)
    caller = "neo_hookean_energy"
    # the volumetric part per unit lam and per unit mu, each continued below min_det
    shear = invariant / 2 + _continued(-log_det, -1 / clamped, det, clamped)
    bulk = _continued(log_det.square() / 2, log_det / clamped, det, clamped)
    return _weighted_mean(shear, mu, "mu", caller) + _weighted_mean(bulk, lam, "lam", caller)


def rigidity_energy(
    u: torch.Tensor,
    rigidity: Param = 1.0,
    linearity: Param = 1.0,
    orthonormality: Param = 1.0,
    properness: Param = 1.0,
    spacing: Spacing = None,
) -> torch.Tensor:
    """Rigidity penalty (Staring, Klein, Pluim 2007; elastix's ``TransformRigidityPenaltyTerm``).

    Term by term elastix's, with the rigidity coefficients ``c(x) = rigidity(x)``::

        R = max_x c * sum_x c(x) (linearity LC + orthonormality OC + properness PC) / sum_x c(x)

    with ``F = I + grad u`` (``F_ij = delta_ij + d_j u_i``) and

    - ``LC = sum_k sum_{i <= j} (d_i d_j u_k)^2``: the map is locally affine;
    - ``OC = sum_{i <= j} (F^T F - I)_ij^2``: its linear part is orthonormal (each off-diagonal
      pair counted once, as elastix does: ``(F^T F)_12``, not ``2 (F^T F)_12^2``);
    - ``PC = (det F - 1)^2``: and proper (a rotation, not a reflection).

    Each condition is normalised by the sum of the rigidity coefficients over the points where
    it is evaluated, as elastix does (zero where the coefficients sum to less than ``1e-14``),
    so a mask gives the mean of the conditions over the rigid region, whatever its size.

    Where it departs from elastix, and why:

    - the factor ``max_x c`` (per sample): elastix's value does not change when every
      coefficient is scaled (a uniform ``c`` cancels), which would leave a scalar ``rigidity``
      without effect. Here ``c / max c`` (the shape of the coefficients) enters as elastix's
      coefficient image and ``max c`` (their scale) multiplies the term, so ``rigidity`` stays a
      stiffness the hypernetwork can tune. For a 0/1 mask (``max c = 1``) the value is
      elastix's exactly; a scalar ``rigidity`` gives ``rigidity * mean_x(...)``.
    - derivatives: elastix filters the B-spline coefficient images with the spline's
      derivative kernels on the control-point grid; here the dense displacement's forward
      differences on the voxel grid (first differences for ``F``, second forward differences
      for ``LC``), each density read from the map at its first point and normalised by the
      coefficients over its own interior.
    - the three condition weights may be maps too (elastix: scalars).

    Zero exactly for a (finite) rigid motion ``x -> R x + t`` wherever the map is non-zero, so
    ``rigidity`` given as a map (a mask, or per tissue label: bone) makes only those tissues
    rigid.
    """
    check_field(u, "rigidity_energy")
    rigidity = _uniform(rigidity)
    caller = "rigidity_energy"
    physical = to_physical(u, spacing)
    F = deformation_gradient(u, spacing)
    ndim = len(F)
    C = _right_cauchy_green(F)
    orthonormal = _sum(
        (C[i][j] - 1 if i == j else C[i][j]).square() for i in range(ndim) for j in range(i, ndim)
    )
    proper = (_determinant(F) - 1).square()
    second = _second_differences(physical, spacing)
    affine = _sum(h.square().sum(dim=1) for h in second.values())

    def term(density: torch.Tensor, value: Param, name: str) -> torch.Tensor:
        value = _uniform(value)
        if not (is_map(rigidity) or is_map(value)):  # the fused path: scalars scale the mean
            mean = domain_mean(density)
            coefficient = per_sample(rigidity, mean, "rigidity", caller)
            return coefficient * per_sample(value, mean, name, caller) * mean
        weighted = per_sample(value, density, name, caller) * density
        if isinstance(rigidity, torch.Tensor) and is_map(rigidity):
            coefficient = per_sample(rigidity, density, "rigidity", caller)
            total = torch.as_tensor(coefficient).flatten(1).sum(dim=1)
            scale = rigidity.flatten(1).amax(dim=1).to(density.dtype)
            normalised = (coefficient * weighted).flatten(1).sum(dim=1) / total.clamp_min(1e-14)
            return torch.where(total < 1e-14, torch.zeros_like(normalised), scale * normalised)
        mean = domain_mean(weighted)  # a map of the condition's weight, a scalar rigidity
        return per_sample(rigidity, mean, "rigidity", caller) * mean

    return (
        term(affine, linearity, "linearity")
        + term(orthonormal, orthonormality, "orthonormality")
        + term(proper, properness, "properness")
    )


def _smooth(region: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing (``sigma`` voxels, replicated borders) of maps ``(B, 1, *spatial)``."""
    if sigma <= 0:
        return region
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=region.dtype, device=region.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    ndim = region.ndim - 2
    out = region
    for axis in range(ndim):
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius
        padded = torch.nn.functional.pad(out, pad, mode="replicate")
        size = out.shape[2 + axis]
        out = _sum(
            float(kernel[k]) * padded.narrow(2 + axis, k, size) for k in range(2 * radius + 1)
        )
    return out


def interface_normals(
    region: torch.Tensor, spacing: Spacing = None, *, sigma: float = 1.0
) -> list[torch.Tensor]:
    """Unit normals of the interfaces of a region map ``(B, 1, *spatial)``, one per axis.

    The normalised gradient (central differences, per physical unit with ``spacing``) of the
    map smoothed by a Gaussian of ``sigma`` voxels, at every voxel ``(B, *spatial)``; zero where
    the smoothed map is flat. A map that depends on one axis only has normals exactly along it.
    """
    ndim = region.ndim - 2
    smooth = _smooth(region.detach(), sigma)[:, 0]
    step = spacing_tensor(spacing, ndim, smooth)
    grads = list(torch.gradient(smooth, dim=tuple(range(1, ndim + 1))))
    if step is not None:
        grads = [g / step[axis] for axis, g in enumerate(grads)]
    norm = torch.sqrt(_sum(g.square() for g in grads))
    scale = torch.where(norm > 0, 1 / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
    return [g * scale for g in grads]


def sliding_energy(
    u: torch.Tensor,
    region: Param = 0.0,
    slip: Param = 1.0,
    spacing: Spacing = None,
    *,
    sigma: float = 1.0,
) -> torch.Tensor:
    """Direction-dependent (sliding) regularization at region interfaces.

    After Schmidt-Richberg, Werner, Handels, Ehrhardt (2012): diffusion everywhere, except
    across an interface of the ``region`` map (a map ``(B, 1, *spatial)``, e.g. 1 in the lungs
    and 0 elsewhere, built from a label map), where only the normal component of the
    displacement must stay continuous and its tangential component may jump (organs slide
    along each other). For each forward difference ``d_i u`` between ``x`` and ``x + e_i``:

    - both voxels in the same region: ``|d_i u|^2`` (diffusion);
    - across an interface (``region`` differs): ``(1 - slip) |d_i u|^2 + slip (n . d_i u)^2``

    with ``n`` the interface normal
    ([`interface_normals`][regzoo.regularizers.functional.interface_normals], averaged over the two
    voxels). The energy is their sum over axes, averaged over the domain (as
    [`diffusion_energy`][regzoo.regularizers.functional.diffusion_energy]). ``slip = 1`` leaves
    tangential jumps free (zero energy for a motion tangential to a planar interface, jump
    included), ``slip = 0`` is plain diffusion; a ``region`` that is a float or constant per sample
    has no interface (diffusion). Quadratic in ``u``. ``slip`` may be a map (read at ``x``).
    """
    check_field(u, "sliding_energy")
    region, slip = _uniform(region), _uniform(slip)
    ndim = u.shape[1]
    diffs = differences(to_physical(u, spacing), spacing)
    if not isinstance(region, torch.Tensor) or not is_map(region):
        return _sum(_mean_square(d, ndim) for d in diffs)
    caller = "sliding_energy"
    region = region.to(dtype=u.dtype, device=u.device)
    normals = interface_normals(region, spacing, sigma=sigma)
    sizes = diffs[0].shape[2:]
    labels = region[:, 0]
    total = u.new_zeros(u.shape[0])
    for axis, d in enumerate(diffs):
        here = labels
        for a, n in enumerate(sizes):
            here = here.narrow(1 + a, 0, n)
        there = labels
        for a, n in enumerate(sizes):
            there = there.narrow(1 + a, int(a == axis), n)
        crossing = (here != there).to(u.dtype)
        normal = []
        for component in normals:
            start = component
            end = component
            for a, n in enumerate(sizes):
                start = start.narrow(1 + a, 0, n)
                end = end.narrow(1 + a, int(a == axis), n)
            normal.append((start + end) / 2)
        square = d.square().sum(dim=1)
        along = _sum(normal[k] * d[:, k] for k in range(ndim)).square()
        slip_t = per_sample(slip, square, "slip", caller)
        total = total + domain_mean(square - crossing * slip_t * (square - along))
    return total
