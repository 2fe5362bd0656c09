"""The built-in regularizer zoo: thin registered wrappers around :mod:`.functional`."""

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
    "JacobianPenalty",
    "LinearElastic",
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
    """Options of :class:`JacobianPenalty`."""

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
