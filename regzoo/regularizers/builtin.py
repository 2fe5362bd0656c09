"""The built-in regularizer zoo: thin registered wrappers around
[`functional`][regzoo.regularizers.functional]."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

import regzoo.regularizers.functional as functional
from regzoo.params import ParamSpace, ParamSpec
from regzoo.regularizers.base import Regularizer, regularizer
from regzoo.spatial import Spacing

__all__ = [
    "BendingEnergy",
    "Curvature",
    "Diffusion",
    "Hyperelastic",
    "JacobianPenalty",
    "LinearElastic",
    "NeoHookean",
    "RigidityPenalty",
    "Sliding",
    "StVenantKirchhoff",
    "TotalVariation",
]

Params = Mapping[str, float | torch.Tensor]


@regularizer("diffusion")
class Diffusion(Regularizer):
    """Diffusion regularizer (HyperMorph's): ``R(u) = mean_x |grad u(x)|^2``.

    No physical parameters; its only knob is the term weight ``alpha`` (set in the config).
    Use it as the standard smoothness baseline.
    """

    quadratic: ClassVar[bool] = True

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.diffusion_energy(u, spacing)


@regularizer("linear_elastic")
class LinearElastic(Regularizer):
    """Linear elasticity (Broit 1981; the paper's Eq. 2).

    ``R(u; lam, mu) = mean_x( mu/4 * sum_ij (d_i u_j + d_j u_i)^2 + lam/2 * (div u)^2 )``

    - ``mu``: shear modulus, the material's stiffness against shear;
    - ``lam``: first Lame parameter, related to the bulk modulus (resistance to compression).

    Translations and infinitesimal rotations cost nothing; a divergence-free field pays no
    ``lam`` term. Use it for physically plausible motion of soft tissue (e.g. lung).

    Both parameters default to ``[1e-2, 1e2]`` on a log scale: from under-regularised (folding)
    to over-regularised (frozen) motion with LNCC on intensities in ``[0, 1]``; the literature's
    lung values (Lai-Fook 45.33 / 8, Brock 15.51 / 1.72) lie inside.
    """

    space = ParamSpace.of(
        ParamSpec(
            name="lam",
            low=1e-2,
            high=1e2,
            default=1.0,
            scale="log",
            domain=(0.0, None),
            description="first Lame parameter (compression / bulk behaviour)",
        ),
        ParamSpec(
            name="mu",
            low=1e-2,
            high=1e2,
            default=1.0,
            scale="log",
            domain=(0.0, None),
            description="shear modulus (stiffness against shear)",
        ),
    )
    quadratic: ClassVar[bool] = True
    spatial_params: ClassVar[bool] = True

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.linear_elastic_energy(u, params["lam"], params["mu"], spacing)


@regularizer("bending_energy")
class BendingEnergy(Regularizer):
    """Bending energy (thin-plate spline): ``R(u) = mean_x sum_k sum_ij (d_i d_j u_k)^2``.

    Zero for every affine field: it penalises curvature of the deformation, not its linear
    part. Use it when global affine-like motion must stay free (e.g. free-form deformations).
    """

    quadratic: ClassVar[bool] = True
    derivative_order: ClassVar[int | None] = 2  # R(u; s h) = R(u; h) / s^2

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.bending_energy(u, spacing)


@regularizer("curvature")
class Curvature(Regularizer):
    """Curvature (Fischer & Modersitzki 2004): ``R(u) = mean_x sum_k (Laplacian u_k)^2``.

    Zero for affine fields, with a smaller kernel than bending energy (no mixed derivatives).
    """

    quadratic: ClassVar[bool] = True
    derivative_order: ClassVar[int | None] = 2  # R(u; s h) = R(u; h) / s^2

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.curvature_energy(u, spacing)


@regularizer("total_variation")
class TotalVariation(Regularizer):
    """Total variation: ``R(u; eps) = mean_x sqrt(|grad u|^2 + eps^2) - eps``.

    The L1 counterpart of diffusion: it allows sharp motion boundaries (e.g. sliding organs).
    ``eps`` (log scale) smooths the kink at zero gradient; small values approach pure TV.
    The energy grows linearly, not quadratically, with the displacement.
    """

    space = ParamSpace.of(
        ParamSpec(
            name="eps",
            low=1e-4,
            high=1e-1,
            default=1e-3,
            scale="log",
            domain=(0.0, None),
            description="Charbonnier smoothing of the gradient norm",
        ),
    )
    quadratic: ClassVar[bool] = False
    spatial_params: ClassVar[bool] = True

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.total_variation_energy(u, params["eps"], spacing)


class JacobianOptions(BaseModel):
    """Options of [`JacobianPenalty`][regzoo.regularizers.builtin.JacobianPenalty]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_det: float = Field(1e-3, gt=0, description="clamp of det J inside the logarithm")


@regularizer("jacobian")
class JacobianPenalty(Regularizer):
    """Jacobian-determinant penalty (volume preservation and folding).

    ``R(u) = mean_x( volume_weight * (log det J)^2 + folding_weight * relu(-det J) )`` with
    ``J = I + grad u`` and ``det J`` clamped at ``min_det`` inside the logarithm.

    - ``volume_weight``: weight of local volume change (incompressibility);
    - ``folding_weight``: weight of folded voxels (negative determinant).

    Not quadratic. Use it on top of a smoothness term to keep deformations invertible.
    """

    space = ParamSpace.of(
        ParamSpec(
            name="volume_weight",
            low=0.0,
            high=1.0,
            default=1.0,
            domain=(0.0, None),
            description="weight of (log det J)^2, local volume change",
        ),
        ParamSpec(
            name="folding_weight",
            low=0.0,
            high=10.0,
            default=1.0,
            domain=(0.0, None),
            description="weight of relu(-det J), folding",
        ),
    )
    quadratic: ClassVar[bool] = False
    spatial_params: ClassVar[bool] = True
    Options = JacobianOptions
    options: JacobianOptions

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.jacobian_energy(
            u, params["volume_weight"], params["folding_weight"], min_det=self.options.min_det
        )


# --------------------------------------------------------------------------------------------
# Beyond linear elasticity (issue 24): large-strain elasticity, hyperelasticity, rigidity and
# sliding. Stiffnesses are on a log scale over four decades, like linear_elastic's.


def _stiffness(name: str, description: str, default: float = 1.0) -> ParamSpec:
    return ParamSpec(
        name=name,
        low=1e-2,
        high=1e2,
        default=default,
        scale="log",
        domain=(0.0, None),
        description=description,
    )


LAME = ParamSpace.of(
    _stiffness("lam", "first Lame parameter (compression / bulk behaviour)"),
    _stiffness("mu", "shear modulus (stiffness against shear)"),
)


class MinDetOptions(BaseModel):
    """Options of the energies with a volume barrier
    ([`Hyperelastic`][regzoo.regularizers.builtin.Hyperelastic],
    [`NeoHookean`][regzoo.regularizers.builtin.NeoHookean])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_det: float = Field(
        1e-2,
        gt=0,
        le=0.2,
        description="det F below which the volume barrier is continued by its tangent "
        "(finite and still growing for folded voxels)",
    )


@regularizer("hyperelastic")
class Hyperelastic(Regularizer):
    """Hyperelastic regularization (Burger, Modersitzki, Ruthotto 2013; FAIR's ``hyperElastic``).

    ``R(u) = mean_x( length/2 |grad u|^2 + area/2 sum_i (|cof(F) e_i|^2 - 1)^2
    + volume ((det F - 1)^2 / det F)^2 )`` with ``F = I + grad u``.

    - ``length``: weight of the squared displacement gradient (line lengths);
    - ``area``: weight of face-area changes: ``|cof(F) e_i|`` is the area ratio of the deformed
      face with reference normal ``e_i`` (Nanson); in 2D the faces are edges;
    - ``volume``: weight of volume changes, ``psi(J) = ((J - 1)^2 / J)^2``: ``psi(J) = psi(1/J)``
      and ``psi -> inf`` as ``J -> 0``, so deformations stay invertible at large motion where
      linear elasticity folds (below the option ``min_det`` ``psi`` is continued by its tangent:
      finite for folded voxels, and still pushing them back).

    Translations cost nothing; rigid rotations cost nothing in the area and volume terms (the
    length term is FAIR's quadratic one). Not quadratic. Not to be confused with the paper's
    "hyper-elastic" models, which are linear elasticity under a hypernetwork. All three weights
    may be given per tissue label.
    """

    space = ParamSpace.of(
        _stiffness("length", "weight of length changes (squared displacement gradient)"),
        _stiffness("area", "weight of face-area changes (cofactor of F)"),
        _stiffness("volume", "weight of volume changes (det F; unbounded as det F -> 0)"),
    )
    quadratic: ClassVar[bool] = False
    spatial_params: ClassVar[bool] = True
    Options = MinDetOptions
    options: MinDetOptions

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.hyperelastic_energy(
            u,
            params["length"],
            params["area"],
            params["volume"],
            spacing,
            min_det=self.options.min_det,
        )


@regularizer("st_venant_kirchhoff")
class StVenantKirchhoff(Regularizer):
    """St Venant-Kirchhoff elasticity: linear elasticity on the Green-Lagrange strain.

    ``R(u; lam, mu) = mean_x( lam/2 (tr E)^2 + mu tr(E^2) )``, ``E = (F^T F - I) / 2``,
    ``F = I + grad u``.

    The same ``lam``, ``mu`` as ``linear_elastic``, to which it reduces for small strains, but
    invariant to finite rotations (linear elasticity charges a rotated body for its rotation).
    It does not resist compression to zero volume; ``neo_hookean`` or ``hyperelastic`` do.
    Not quadratic. Both parameters may be given per tissue label.
    """

    space = LAME
    quadratic: ClassVar[bool] = False
    spatial_params: ClassVar[bool] = True

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.st_venant_kirchhoff_energy(u, params["lam"], params["mu"], spacing)


@regularizer("neo_hookean")
class NeoHookean(Regularizer):
    """Compressible Neo-Hookean hyperelasticity.

    ``R(u; lam, mu) = mean_x( mu/2 (|F|^2 - D) - mu log J + lam/2 (log J)^2 )``,
    ``F = I + grad u``, ``J = det F``.

    The same ``lam``, ``mu`` as ``linear_elastic`` (its small-strain limit), invariant to finite
    rotations, non-negative, and growing without bound as a voxel is compressed to zero volume
    (below the option ``min_det`` the ``J`` terms are continued by their tangent: finite for
    folded voxels, and still pushing them back). Not quadratic. Both parameters may be given
    per tissue label. (``plugins/regzoo-neohookean`` keeps its own Neo-Hookean as the plugin
    tutorial's worked example, registered as ``neo_hookean_example``.)
    """

    space = LAME
    quadratic: ClassVar[bool] = False
    spatial_params: ClassVar[bool] = True
    Options = MinDetOptions
    options: MinDetOptions

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.neo_hookean_energy(
            u, params["lam"], params["mu"], spacing, min_det=self.options.min_det
        )


@regularizer("rigidity")
class RigidityPenalty(Regularizer):
    """Rigidity penalty (Staring, Klein, Pluim 2007; elastix's ``TransformRigidityPenaltyTerm``).

    ``R(u) = max c * sum_x c(x) ( linearity LC + orthonormality OC + properness PC ) / sum_x c(x)``
    with the rigidity coefficients ``c = rigidity``, ``F = I + grad u``,
    ``LC = sum_k sum_{i<=j} (d_i d_j u_k)^2`` (locally affine),
    ``OC = sum_{i<=j} (F^T F - I)_ij^2`` (orthonormal) and ``PC = (det F - 1)^2`` (proper):
    elastix's terms and normalisation, and the factor ``max c`` that keeps a scalar
    ``rigidity`` a stiffness ([`rigidity_energy`][regzoo.regularizers.functional.rigidity_energy] says
    where and why it departs from elastix).

    Zero exactly for a finite rigid motion ``x -> R x + t``, positive for shear, scaling or
    bending. Give ``rigidity`` per tissue label (e.g. bone free on its range, every other label
    0 through ``background``) to make only those tissues rigid, next to a smoothness term for
    the rest; a scalar makes the whole domain rigid. The three condition weights are relative
    weights of the conditions.
    """

    space = ParamSpace.of(
        _stiffness("rigidity", "rigidity coefficient (a map per tissue label: 0 = not rigid)"),
        _stiffness("linearity", "weight of the linearity condition (second derivatives)"),
        _stiffness("orthonormality", "weight of the orthonormality condition (F^T F = I)"),
        _stiffness("properness", "weight of the properness condition (det F = 1)"),
    )
    quadratic: ClassVar[bool] = False
    # second (linearity) and first (orthonormality, properness) derivatives: no one scaling
    derivative_order: ClassVar[int | None] = None
    spatial_params: ClassVar[bool] = True

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.rigidity_energy(
            u,
            params["rigidity"],
            params["linearity"],
            params["orthonormality"],
            params["properness"],
            spacing,
        )


class SlidingOptions(BaseModel):
    """Options of [`Sliding`][regzoo.regularizers.builtin.Sliding]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: float = Field(
        1.0, ge=0, description="Gaussian smoothing (voxels) of the region map for the normals"
    )


@regularizer("sliding")
class Sliding(Regularizer):
    """Direction-dependent (sliding) regularization at organ boundaries.

    After Schmidt-Richberg et al. 2012 (direction-dependent regularization; see also Delmon et
    al. 2013, Pace et al. 2013): diffusion ``|d_i u|^2`` everywhere, except on the differences
    that cross an interface of the ``region`` map, which pay
    ``(1 - slip) |d_i u|^2 + slip (n . d_i u)^2`` with ``n`` the interface normal (the
    gradient of the region map smoothed by ``sigma`` voxels). With ``slip = 1`` only the normal
    component must stay continuous: the tangential one may jump, so the lungs slide along the
    chest wall; ``slip = 0`` is diffusion.

    ``region`` is the organ mask, given per tissue label through the label map, e.g.
    ``region: {per_label: {lung: 1}, background: 0}``: interfaces are where the map changes.
    Its declared value is fixed (0, no interface: plain diffusion), so it never becomes a
    hypernetwork input unless a config frees it. Quadratic in ``u``.
    """

    space = ParamSpace.of(
        ParamSpec(
            name="region",
            low=0.0,
            high=0.0,
            default=0.0,
            description="organ mask value (give per_label; sliding interfaces are where it "
            "changes)",
        ),
        ParamSpec(
            name="slip",
            low=0.0,
            high=1.0,
            default=1.0,
            domain=(0.0, 1.0),
            description="share of the tangential coupling removed across the interfaces",
        ),
    )
    quadratic: ClassVar[bool] = True
    spatial_params: ClassVar[bool] = True
    Options = SlidingOptions
    options: SlidingOptions

    def energy(self, u: torch.Tensor, params: Params, spacing: Spacing) -> torch.Tensor:
        return functional.sliding_energy(
            u, params["region"], params["slip"], spacing, sigma=self.options.sigma
        )
