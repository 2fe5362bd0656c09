"""The similarities lung-CT registration is won with: MIND-SSC, NGF and Parzen mutual information.

Registered in :data:`regzoo.similarity.SIMILARITIES` as ``mind_ssc``, ``ngf`` and ``mi`` (the
package imports this module, so they are there whatever one imports from regzoo); each
works in 2D and 3D, is a loss (lower is better) and passes
:func:`regzoo.testing.check_similarity_properties`.

- **MIND-SSC** (Heinrich et al., "MIND: Modality independent neighbourhood descriptor", MedIA
  2012; "Towards realtime multimodal fusion ... self-similarity context", MICCAI 2013): per voxel,
  a descriptor of how the image's patches around it resemble each other, compared by their mean
  squared difference. It is what deeds and ConvexAdam (Siebert, Hansen, Heinrich 2021) register
  lung CT with. Descriptors are a function of one image, so refinement computes them once per
  image pair and warps the moving image's descriptors (:class:`DescriptorSimilarity`).
- **NGF** (Haber & Modersitzki, "Intensity gradient based registration and fusion of
  multi-modal images", MICCAI 2006; FAIR, deepali): edges aligned, whatever their contrast.
- **MI** (Mattes et al. 2003; the Gaussian Parzen form of MONAI's
  ``GlobalMutualInformationLoss``): statistical dependence of the two intensities, for
  intensity changes between inspiration and expiration.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from regzoo.similarity import Similarity, box_filter, similarity

__all__ = [
    "MI",
    "MINDSSC",
    "NGF",
    "DescriptorSimilarity",
    "mind_ssc",
    "mutual_information",
    "normalized_gradient",
]


class DescriptorSimilarity(Similarity):
    """A similarity that compares per-image descriptors: ``loss = compare(d(F), d(W))``.

    Subclasses implement :meth:`features` (a function of one image) and may override
    :meth:`compare` (the mean squared difference of the descriptors by default). Refinement
    (:func:`regzoo.refinement.refine_field`) then computes the fixed and moving descriptors once per
    image pair and pyramid level and warps the moving descriptors, instead of recomputing them
    on every warped image (as deeds and ConvexAdam do); training calls the loss on the warped
    image, like any similarity.
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


def _shifted(padded: torch.Tensor, offset: tuple[int, ...], pad: int) -> torch.Tensor:
    """``I(x + offset)`` on the original grid, from ``I`` padded by ``pad`` on every side."""
    index: list[slice] = [slice(None), slice(None)]
    for delta, size in zip(offset, padded.shape[2:], strict=True):
        index.append(slice(pad + delta, size - pad + delta))
    return padded[tuple(index)]


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

    For each pair ``(p, q)`` of :func:`ssc_offsets` (axis neighbours at distance ``dilation``,
    ``sqrt(2) dilation`` apart) the patch distance
    ``S_pq(x) = mean_{y in box_r(x)} (I(y + p) - I(y + q))^2`` (box of side ``2 radius + 1``,
    border replicated), then::

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
    # the average over the in-domain part of each box, as if the border were replicated far
    support = box_filter(torch.ones_like(image[:1, :1]), 2 * radius + 1)
    distances = box_filter(distances, 2 * radius + 1) / support
    distances = distances - distances.amin(dim=1, keepdim=True)
    variance = distances.mean(dim=1, keepdim=True)
    level = variance.flatten(1).mean(dim=1).detach().clamp_min(eps)
    level = level.view(-1, *[1] * (ndim + 1))
    variance = torch.maximum(torch.minimum(variance, 1e3 * level), 1e-3 * level)
    return torch.exp(-distances / variance)


class MINDOptions(BaseModel):
    """Options of :class:`MINDSSC`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    radius: int = Field(1, ge=0, description="patch half-side: patches of (2 radius + 1)^D")
    dilation: int = Field(2, ge=1, description="distance of the neighbours compared, voxels")
    eps: float = Field(1e-12, gt=0, description="floor of the descriptor's variance")


@similarity("mind_ssc")
class MINDSSC(DescriptorSimilarity):
    """Mean squared difference of MIND-SSC descriptors, ``mean_{x,pq} (MIND_F - MIND_W)^2``.

    Descriptors from :func:`mind_ssc`; the loss lies in ``[0, 1]``, is 0 for identical images
    and is unchanged by affine intensity maps of either image (contrast inversion included).
    Refinement computes the descriptors once per pair (:class:`DescriptorSimilarity`).
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


# -- NGF --------------------------------------------------------------------------------------


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
    """Options of :class:`NGF`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eta: float = Field(
        0.1, gt=0, description="edge parameter, relative to the image's mean gradient norm"
    )
    eps: float = Field(1e-12, gt=0, description="absolute floor of the edge parameter")


@similarity("ngf")
class NGF(Similarity):
    """Normalised gradient fields (Haber & Modersitzki 2006): ``1 - mean_x (n_F . n_W)^2``.

    ``n`` is :func:`normalized_gradient`. The loss lies in ``[0, 1]``: near 0 where the edges of
    the two images are parallel (of either polarity; ``|n| < 1`` by the edge parameter), 1 where
    they are orthogonal or absent. It is
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


# -- mutual information -----------------------------------------------------------------------


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
    """Options of :class:`MI`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bins: int = Field(32, ge=2, le=256, description="histogram bins per image")
    sigma_ratio: float = Field(0.5, gt=0, description="Parzen width in bin spacings")


@similarity("mi")
class MI(Similarity):
    """Negative Parzen mutual information, ``-MI(F, W)`` in ``[-log bins, 0]``
    (:func:`mutual_information`).

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
