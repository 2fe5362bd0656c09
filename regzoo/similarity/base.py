"""The similarity base class, its registry and decorator, and the box filter they share.

A similarity is called as ``sim(fixed, warped) -> (B,)`` (lower is better); ``bind_fixed``
fixes the fixed image once for refinement. Third-party similarities register through the
entry-point group ``regzoo.similarities`` or [`similarity`][regzoo.similarity.base.similarity].
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from regzoo.registry import NoOptions, Registry
from regzoo.spatial import check_image

__all__ = ["SIMILARITIES", "Similarity", "box_filter", "similarity"]


class Similarity(nn.Module):
    """Base class of registered similarity losses: ``forward(fixed, warped) -> (B,)``.

    Subclasses implement [`loss`][regzoo.similarity.base.Similarity.loss] and declare what
    [`regzoo.testing`][regzoo.testing] checks:

    - ``bounds``: the range ``(min, max)`` the loss promises (``None``: unbounded on that side),
      e.g. ``(0.0, None)`` for MSE, ``(-1.0, 0.0)`` for LNCC;
    - [`radius`][regzoo.similarity.base.Similarity.radius]: how far the loss looks around each voxel
      (0 for a pointwise loss).
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    bounds: ClassVar[tuple[float | None, float | None]] = (None, None)
    registered_name: ClassVar[str]

    @property
    def radius(self) -> int | None:
        """Locality of the loss, in voxels.

        ``r`` declares that the loss is the mean over voxels ``x`` of a function of both images
        on the box of side ``2r + 1`` around ``x`` (the part of it inside the domain): 0 for a
        pointwise loss (MSE), ``window // 2`` for a windowed one (LNCC). ``None`` (the default)
        declares a global loss, whose value depends on where the content lies only through
        statistics over the whole image (e.g. mutual information).

        Either way a joint translation of both images' content inside a constant background
        (a margin of ``2r`` voxels kept free) leaves the loss unchanged, and a pointwise loss is
        unchanged by a joint circular shift;
        [`regzoo.testing.check_similarity_properties`][regzoo.testing.properties.check_similarity_properties] tests both.
        """
        return None

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = self.Options(**options)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Loss per batch element ``(B,)`` between two images ``(B, C, *spatial)``."""
        self.check_pair(fixed, warped)
        return self.loss(fixed, warped)

    def check_pair(self, fixed: torch.Tensor, warped: torch.Tensor) -> None:
        """Refuse anything but two images ``(B, C, *spatial)`` of one channel count and size.

        Raises:
            ValueError: naming the similarity and both shapes.
        """
        name = type(self).__name__
        check_image(fixed, name, name="fixed")
        check_image(warped, name, name="warped")
        if fixed.shape[1:] != warped.shape[1:]:
            raise ValueError(
                f"{name}: 'fixed' {tuple(fixed.shape)} and 'warped' {tuple(warped.shape)} differ"
            )

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        """Compute the loss ``(B,)``; inputs are already checked."""
        raise NotImplementedError

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The loss as a function of the warped image alone: ``bind_fixed(F)(W) == sim(F, W)``.

        Whatever depends on the fixed image only (LNCC's local means and variances, NGF's
        normalised gradients) is computed here, once: refinement
        ([`regzoo.refinement.refine_field`][regzoo.refinement.refine_field]) evaluates the loss
        against one fixed image on every iteration. The default recomputes everything; subclasses
        may override it.
        """
        return partial(self.forward, fixed)


def _check_similarity(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Similarity)):
        raise TypeError(f"a similarity must subclass regzoo.similarity.Similarity, got {cls!r}")


SIMILARITIES: Registry[Similarity] = Registry(
    "similarity",
    "regzoo.similarities",
    contract="A Similarity subclass: `sim(fixed, warped) -> (B,)`, lower is better, 2D and 3D.",
    check=_check_similarity,
)
"""The registry of similarity measures: built-ins and the `regzoo.similarities` entry points."""
similarity = SIMILARITIES.register
"""Class decorator registering a similarity: `@similarity("name")` (`SIMILARITIES.register`)."""


def box_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """Moving sum divided by ``window^D`` over a ``window^D`` box with zero padding ("same" size).

    Separable and computed with running sums (a cumulative sum along each axis, then the
    difference of its values ``window`` apart), so the cost per voxel does not grow with the
    window: ``O(D)`` instead of ``O(D * window)`` for separable convolutions or ``window^D`` for
    a dense kernel.
    """
    ndim = check_image(x, "box_filter", name="x")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"box_filter() 'window' must be a positive odd integer, got {window}")
    radius = window // 2
    out = x
    for axis in range(2, 2 + ndim):
        pad = [0, 0] * ndim
        first = 2 * (ndim + 1 - axis)  # F.pad lists the last axis first
        pad[first], pad[first + 1] = radius + 1, radius
        running = F.pad(out, pad).cumsum(axis)
        size = out.shape[axis]
        out = running.narrow(axis, window, size) - running.narrow(axis, 0, size)
    return out / window**ndim


def _shifted(padded: torch.Tensor, offset: tuple[int, ...], pad: int) -> torch.Tensor:
    """``I(x + offset)`` on the original grid, from ``I`` padded by ``pad`` on every side."""
    index: list[slice] = [slice(None), slice(None)]
    for delta, size in zip(offset, padded.shape[2:], strict=True):
        index.append(slice(pad + delta, size - pad + delta))
    return padded[tuple(index)]
