"""Gradient similarity: NGF (Haber & Modersitzki, "Intensity gradient based registration and
fusion of multi-modal images", MICCAI 2006; FAIR, deepali): edges aligned, whatever their
contrast."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from regzoo.similarity.base import Similarity, _shifted, similarity

__all__ = ["NGF", "normalized_gradient"]


def normalized_gradient(image: torch.Tensor, eta: float, eps: float = 1e-12) -> torch.Tensor:
    """The normalised gradient field ``g / sqrt(|g|^2 + e^2)`` of images ``(B, 1, *spatial)``.

    ``g`` is the central-difference gradient (border replicated, voxel units) and the edge
    parameter ``e = eta * mean_x |g(x)| + eps`` is relative to the image's mean gradient norm,
    so the field is unchanged by ``a I + b`` (``a != 0`` flips its sign only). Returns
    ``(B, D, *spatial)`` with norms in ``[0, 1)``.
    """
    ndim = image.ndim - 2
    padded = F.pad(image, [1] * (2 * ndim), mode="replicate")
    gradient = []
    for axis in range(ndim):
        step = [0] * ndim
        step[axis] = 1
        back = tuple(-s for s in step)
        gradient.append((_shifted(padded, tuple(step), 1) - _shifted(padded, back, 1)) / 2)
    g = torch.cat(gradient, dim=1)
    norm2 = g.pow(2).sum(dim=1, keepdim=True)
    edge = eta * norm2.sqrt().flatten(1).mean(dim=1).detach() + eps
    edge = edge.view(-1, *[1] * (ndim + 1))
    return g / (norm2 + edge * edge).sqrt()


class NGFOptions(BaseModel):
    """Options of [`NGF`][regzoo.similarity.gradient.NGF]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eta: float = Field(
        0.1, gt=0, description="edge parameter, relative to the image's mean gradient norm"
    )
    eps: float = Field(1e-12, gt=0, description="absolute floor of the edge parameter")


@similarity("ngf")
class NGF(Similarity):
    """Normalised gradient fields (Haber & Modersitzki 2006): ``1 - mean_x (n_F . n_W)^2``.

    ``n`` is [`normalized_gradient`][regzoo.similarity.gradient.normalized_gradient]. The loss lies
    in ``[0, 1]``: near 0 where the edges of the two images are parallel (of either polarity; ``|n|
    < 1`` by the edge parameter), 1 where they are orthogonal or absent. It is
    unchanged by affine intensity maps of either image, and for vanishing ``eta`` by any
    strictly monotone one where the gradient keeps its direction (the gradient of ``g(I)`` is
    ``g'(I) grad I``). Gradients in voxel units: on anisotropic grids the directions are those of
    the voxel grid.
    """

    Options = NGFOptions

    options: NGFOptions
    bounds = (0.0, 1.0)

    @property
    def radius(self) -> int:
        """1: central differences."""
        return 1

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self._against(normalized_gradient(fixed, self.options.eta, self.options.eps), warped)

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fixed image's normalised gradient computed once."""
        self.check_pair(fixed, fixed)
        normalized = normalized_gradient(fixed, self.options.eta, self.options.eps)

        def loss(warped: torch.Tensor) -> torch.Tensor:
            self.check_pair(fixed, warped)
            return self._against(normalized, warped)

        return loss

    def _against(self, fixed_normalized: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        o = self.options
        cosine = (fixed_normalized * normalized_gradient(warped, o.eta, o.eps)).sum(dim=1)
        return 1 - cosine.pow(2).flatten(1).mean(dim=1)
