"""Descriptor similarities: a loss between per-image descriptors, computed once per image in
refinement ([`DescriptorSimilarity`][regzoo.similarity.descriptor.DescriptorSimilarity]), and
MIND-SSC (Heinrich et al., "MIND: Modality independent neighbourhood descriptor", MedIA 2012;
"Towards realtime multimodal fusion ... self-similarity context", MICCAI 2013), what deeds and
ConvexAdam register lung CT with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from regzoo.similarity.base import Similarity, _shifted, box_filter, similarity

__all__ = ["MINDSSC", "DescriptorSimilarity", "mind_ssc", "ssc_offsets"]


class DescriptorSimilarity(Similarity):
    """A similarity that compares per-image descriptors: ``loss = compare(d(F), d(W))``.

    Subclasses implement [`features`][regzoo.similarity.descriptor.DescriptorSimilarity.features] (a
    function of one image) and may override
    [`compare`][regzoo.similarity.descriptor.DescriptorSimilarity.compare] (the mean squared
    difference of the descriptors by default). Refinement
    ([`regzoo.refinement.refine_field`][regzoo.refinement.refine_field]) then computes the fixed and
    moving descriptors once per image pair and pyramid level and warps the moving descriptors,
    instead of recomputing them on every warped image (as deeds and ConvexAdam do); training calls
    the loss on the warped image, like any similarity.
    """

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Descriptors ``(B, K, *spatial)`` of images ``(B, C, *spatial)``."""
        raise NotImplementedError

    def compare(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """The loss ``(B,)`` between two descriptor images: their mean squared difference."""
        return (fixed - warped).pow(2).flatten(1).mean(dim=1)

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self.compare(self.features(fixed), self.features(warped))

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fixed image's descriptors computed once."""
        self.check_pair(fixed, fixed)
        descriptors = self.features(fixed)

        def loss(warped: torch.Tensor) -> torch.Tensor:
            self.check_pair(fixed, warped)
            return self.compare(descriptors, self.features(warped))

        return loss


# -- MIND-SSC --------------------------------------------------------------------------------


def ssc_offsets(ndim: int, dilation: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The self-similarity context's patch pairs: every pair of the ``2D`` axis neighbours at
    distance ``dilation`` that are ``sqrt(2) * dilation`` apart (12 pairs in 3D, 4 in 2D)."""
    neighbours = []
    for axis in range(ndim):
        for sign in (-1, 1):
            offset = [0] * ndim
            offset[axis] = sign * dilation
            neighbours.append(tuple(offset))
    return [
        (p, q)
        for i, p in enumerate(neighbours)
        for q in neighbours[i + 1 :]
        if sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) == 2 * dilation**2
    ]


def mind_ssc(
    image: torch.Tensor, *, radius: int = 1, dilation: int = 2, eps: float = 1e-12
) -> torch.Tensor:
    """MIND-SSC descriptors (Heinrich et al. 2013) of images ``(B, C, *spatial)``, 2D or 3D.

    For each pair ``(p, q)`` of [`ssc_offsets`][regzoo.similarity.descriptor.ssc_offsets] (axis neighbours at distance ``dilation``,
    ``sqrt(2) dilation`` apart) the patch distance
    ``S_pq(x) = mean_{y in box_r(x)} (I(y + p) - I(y + q))^2`` (box of side ``2 radius + 1``;
    the shifted samples ``I(y + p)`` beyond the image read its border (replicate padding), and
    near the border the mean runs over the part of the box inside the image), then::

        MIND_pq(x) = exp(-(S_pq(x) - min_pq S(x)) / V(x)),    V(x) = mean_pq (S(x) - min S(x))

    with ``V`` clamped to ``[1e-3, 1e3]`` times its image mean (as ConvexAdam does) and at least
    ``eps``. Each descriptor lies in ``(0, 1]``. It is unchanged by an affine intensity map
    ``a I + b`` with ``a != 0`` (an inverted image has the same descriptors) down to ``eps``.

    Returns:
        ``(B, C * P, *spatial)`` with ``P = 12`` pairs in 3D, 4 in 2D.
    """
    ndim = image.ndim - 2
    padded = F.pad(image, [dilation] * (2 * ndim), mode="replicate")
    distances = torch.cat(
        [
            (_shifted(padded, p, dilation) - _shifted(padded, q, dilation)).pow(2)
            for p, q in ssc_offsets(ndim, dilation)
        ],
        dim=1,
    )
    # the average over the part of each box inside the image (the box filter pads with zeros;
    # dividing by its support's share leaves the mean over the in-image voxels)
    support = box_filter(torch.ones_like(image[:1, :1]), 2 * radius + 1)
    distances = box_filter(distances, 2 * radius + 1) / support
    distances = distances - distances.amin(dim=1, keepdim=True)
    variance = distances.mean(dim=1, keepdim=True)
    level = variance.flatten(1).mean(dim=1).detach().clamp_min(eps)
    level = level.view(-1, *[1] * (ndim + 1))
    variance = torch.maximum(torch.minimum(variance, 1e3 * level), 1e-3 * level)
    return torch.exp(-distances / variance)


class MINDOptions(BaseModel):
    """Options of [`MINDSSC`][regzoo.similarity.descriptor.MINDSSC]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    radius: int = Field(1, ge=0, description="patch half-side: patches of (2 radius + 1)^D")
    dilation: int = Field(2, ge=1, description="distance of the neighbours compared, voxels")
    eps: float = Field(1e-12, gt=0, description="floor of the descriptor's variance")


@similarity("mind_ssc")
class MINDSSC(DescriptorSimilarity):
    """Mean squared difference of MIND-SSC descriptors, ``mean_{x,pq} (MIND_F - MIND_W)^2``.

    Descriptors from [`mind_ssc`][regzoo.similarity.descriptor.mind_ssc]; the loss lies in ``[0,
    1]``, is 0 for identical images and is unchanged by affine intensity maps of either image
    (contrast inversion included). Refinement computes the descriptors once per pair
    ([`DescriptorSimilarity`][regzoo.similarity.descriptor.DescriptorSimilarity]).
    """

    Options = MINDOptions

    options: MINDOptions
    bounds = (0.0, 1.0)

    @property
    def radius(self) -> int:
        """Patch half-side plus the neighbours' distance."""
        return self.options.radius + self.options.dilation

    def features(self, image: torch.Tensor) -> torch.Tensor:
        o = self.options
        return mind_ssc(image, radius=o.radius, dilation=o.dilation, eps=o.eps)
