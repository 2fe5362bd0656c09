"""Information similarity: mutual information of the two intensities (Maes et al. 1997; Viola
and Wells 1997), for intensity changes between inspiration and expiration. The joint histogram
is estimated with Gaussian Parzen windows over every voxel, as MONAI's
``GlobalMutualInformationLoss`` does; not the cubic B-spline windows over a random sample of
Mattes et al. 2003 (elastix's and ITK's ``MattesMutualInformation``)."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from regzoo.similarity.base import Similarity, similarity

__all__ = ["MI", "mutual_information"]


def _parzen_weights(image: torch.Tensor, bins: int, sigma_ratio: float) -> torch.Tensor:
    """Gaussian Parzen weights ``(B, N, bins)`` of each voxel's intensity, rescaled to
    ``[0, 1]`` by the image's (detached) range, on ``bins`` centres ``linspace(0, 1)``;
    each row sums to 1."""
    values = image.flatten(1)
    low = values.amin(dim=1, keepdim=True).detach()
    span = (values.amax(dim=1, keepdim=True).detach() - low).clamp_min(1e-12)
    scaled = ((values - low) / span).unsqueeze(-1)
    centres = torch.linspace(0, 1, bins, dtype=image.dtype, device=image.device)
    sigma = sigma_ratio / (bins - 1)
    logits = -((scaled - centres) ** 2) / (2 * sigma * sigma)
    return torch.softmax(logits, dim=-1)


def mutual_information(
    a: torch.Tensor, b: torch.Tensor, *, bins: int = 32, sigma_ratio: float = 0.5
) -> torch.Tensor:
    """Parzen-window mutual information ``(B,)`` of two images ``(B, 1, *spatial)``.

    Each image is rescaled to ``[0, 1]`` by its own range (not differentiated), each voxel's
    intensity spread over ``bins`` Gaussian bins of width ``sigma = sigma_ratio / (bins - 1)``
    (weights normalised per voxel, as MONAI's ``GlobalMutualInformationLoss``), and::

        p_ab = mean_x w_a(x) w_b(x)^T,   p_a, p_b its marginals,
        MI   = sum_ij p_ab log(p_ab / (p_a p_b))            in [0, log bins]

    It is unchanged by ``a I + b`` (``a != 0``; the bin centres are symmetric) of either image.
    """
    wa = _parzen_weights(a, bins, sigma_ratio)
    wb = _parzen_weights(b, bins, sigma_ratio)
    joint = torch.bmm(wa.transpose(1, 2), wb) / wa.shape[1]
    pa, pb = joint.sum(dim=2, keepdim=True), joint.sum(dim=1, keepdim=True)
    tiny = torch.finfo(joint.dtype).tiny
    ratio = joint.clamp_min(tiny).log() - (pa * pb).clamp_min(tiny).log()
    return (joint * ratio).sum(dim=(1, 2)).clamp(0.0, math.log(bins))


class MIOptions(BaseModel):
    """Options of [`MI`][regzoo.similarity.information.MI]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bins: int = Field(32, ge=2, le=256, description="histogram bins per image")
    sigma_ratio: float = Field(0.5, gt=0, description="Parzen width in bin spacings")


@similarity("mi")
class MI(Similarity):
    """Negative Parzen mutual information, ``-MI(F, W)`` in ``[-log bins, 0]``
    ([`mutual_information`][regzoo.similarity.information.mutual_information]).

    A global loss: it depends on where the content lies only through the joint histogram.
    """

    Options = MIOptions

    options: MIOptions
    bounds = (-math.log(256), 0.0)  # bins <= 256

    @property
    def radius(self) -> None:
        """``None``: a global loss."""
        return None

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        o = self.options
        return -mutual_information(fixed, warped, bins=o.bins, sigma_ratio=o.sigma_ratio)
