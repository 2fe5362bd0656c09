"""The Neo-Hookean energy (a plain function) and its registered regularizer class."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field

from regzoo import ParamSpace, ParamSpec, Regularizer, regularizer
from regzoo.regularizers.functional import domain_mean, per_sample, to_physical
from regzoo.spatial import Spacing, check_field, gradient

__all__ = ["NeoHookean", "NeoHookeanOptions", "neo_hookean_energy"]


def neo_hookean_energy(
    u: torch.Tensor,
    lam: float | torch.Tensor,
    mu: float | torch.Tensor,
    *,
    spacing: Spacing = None,
    min_det: float = 1e-2,
) -> torch.Tensor:
    """Compressible Neo-Hookean strain energy per batch element ``(B,)``.

    ``W(F) = mu/2 (tr(F^T F) - D) - mu log J + lam/2 (log J)^2`` with ``F = I + grad u`` and
    ``J = det F`` (clamped at ``min_det``), averaged over the domain.

    Unlike linear elasticity it is invariant to finite rotations, and it grows without bound as
    a voxel is compressed to zero volume. For small strains it equals the linear elastic
    energy ``mu |sym grad u|^2 + lam/2 (div u)^2``.
    """
    ndim = check_field(u, "neo_hookean_energy")
    jac = gradient(to_physical(u, spacing), spacing)  # [:, j, i] = d_i u_j
    eye = torch.eye(ndim, dtype=u.dtype, device=u.device).view(1, ndim, ndim, *([1] * ndim))
    deformation = (jac + eye).movedim(1, -1).movedim(1, -1)  # (B, *s, D, D)
    invariant = deformation.pow(2).sum(dim=(-2, -1))
    log_det = torch.log(torch.linalg.det(deformation).clamp_min(min_det))
    lam_t = per_sample(lam, invariant, "lam", "neo_hookean_energy")
    mu_t = per_sample(mu, invariant, "mu", "neo_hookean_energy")
    density = mu_t / 2 * (invariant - ndim) - mu_t * log_det + lam_t / 2 * log_det.pow(2)
    return domain_mean(density)


class NeoHookeanOptions(BaseModel):
    """Options of `NeoHookean` (``options:`` in a config term)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_det: float = Field(1e-2, gt=0, description="clamp of det F inside the logarithm")


@regularizer("neo_hookean_example")
class NeoHookean(Regularizer):
    """Compressible Neo-Hookean hyperelasticity.

    ``R(u; lam, mu) = mean_x( mu/2 (tr(F^T F) - D) - mu log J + lam/2 (log J)^2 )``,
    ``F = I + grad u``, ``J = det F``.

    - ``lam``: first Lamé parameter (compressibility);
    - ``mu``: shear modulus.

    A large-deformation counterpart of ``linear_elastic``: rotation invariant and strongly
    resisting compression to zero volume. Not quadratic in ``u``.
    """

    space = ParamSpace.of(
        ParamSpec(
            name="lam",
            low=0.0,
            high=1.0,
            default=0.083,
            domain=(0.0, None),
            description="first Lame parameter (compressibility)",
        ),
        ParamSpec(
            name="mu",
            low=0.0,
            high=1.0,
            default=0.03,
            domain=(0.0, None),
            description="shear modulus",
        ),
    )
    quadratic = False
    Options = NeoHookeanOptions

    def energy(
        self, u: torch.Tensor, params: Mapping[str, float | torch.Tensor], spacing: Spacing
    ) -> torch.Tensor:
        return neo_hookean_energy(
            u, params["lam"], params["mu"], spacing=spacing, min_det=self.options.min_det
        )
