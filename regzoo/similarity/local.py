"""Local intensity similarities: LNCC (windowed normalised cross-correlation) and MSE."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from regzoo.similarity.base import Similarity, box_filter, similarity

__all__ = ["LNCC", "MSE"]


class LNCCOptions(BaseModel):
    """Options of [`LNCC`][regzoo.similarity.local.LNCC]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(9, ge=1, description="side of the local window (odd), window^D voxels")
    eps: float = Field(
        1e-8, gt=0, description="stabiliser added to the product of the local variances"
    )

    @field_validator("window")
    @classmethod
    def _odd(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"the window must be odd (centred on its voxel), got {window}")
        return window


@similarity("lncc")
class LNCC(Similarity):
    """Local normalised cross-correlation loss, ``-mean_x cc(x)`` (VoxelMorph's NCC).

    ``cc = cov(F, W)^2 / (var(F) var(W) + eps)`` over a ``window^D`` box (the paper uses 9^D),
    computed with a separable box filter; windows that cross the border average over their
    in-domain voxels only (no zero-padding bias). The optimum is -1 (identical, textured images); it
    is invariant to affine intensity changes up to ``eps``; constant patches give 0, not NaN.
    The loss lies in ``[-1, 0]`` also in float32 on raw intensities (e.g. CT in HU): each image
    is centred on its global mean first (which leaves the loss unchanged in exact arithmetic but
    keeps ``E[x^2] - E[x]^2`` free of cancellation), and ``cov^2 <= var(F) var(W)``
    (Cauchy-Schwarz) is enforced against rounding.
    """

    Options = LNCCOptions
    options: LNCCOptions
    bounds = (-1.0, 0.0)

    @property
    def radius(self) -> int:
        """Half the window side: the loss at ``x`` looks at the ``window^D`` box around it."""
        return self.options.window // 2

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return self._against(self._fixed_statistics(fixed), warped)

    def bind_fixed(self, fixed: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fixed image's centring, local means and variances computed once."""
        self.check_pair(fixed, fixed)
        statistics = self._fixed_statistics(fixed)

        def loss(warped: torch.Tensor) -> torch.Tensor:
            self.check_pair(fixed, warped)
            return self._against(statistics, warped)

        return loss

    def _fixed_statistics(self, fixed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(F - mean F, window support, local mean of F, local variance of F)``."""
        window = self.options.window
        # centred on each image's mean first: the loss is offset invariant, and raw intensities
        # (-1000 HU) would otherwise cancel catastrophically in E[x^2] - E[x]^2 in float32
        fixed = fixed - fixed.mean(dim=tuple(range(2, fixed.ndim)), keepdim=True)
        # average over the in-domain part of each window: no zero-padding bias at the border
        support = box_filter(torch.ones_like(fixed[:1, :1]), window)
        mf = box_filter(fixed, window) / support
        var_f = (box_filter(fixed * fixed, window) / support - mf * mf).clamp_min(0)
        return fixed, support, mf, var_f

    def _against(self, statistics: tuple[torch.Tensor, ...], warped: torch.Tensor) -> torch.Tensor:
        fixed, support, mf, var_f = statistics
        window = self.options.window
        warped = warped - warped.mean(dim=tuple(range(2, warped.ndim)), keepdim=True)
        # one image at a time, not the three stacked: temporaries of one image's size are
        # recycled by the allocator, stacked ones are fresh pages (page faults) on every call
        # (3x less CPU time for forward + backward at 128^3, docs/benchmarks.md)
        mw, mww, mfw = (
            box_filter(x, window) / support for x in (warped, warped * warped, fixed * warped)
        )
        var_w = (mww - mw * mw).clamp_min(0)
        cov = mfw - mf * mw
        product = var_f * var_w
        cc = torch.minimum(cov * cov, product) / (product + self.options.eps)
        return -cc.flatten(1).mean(dim=1)


@similarity("mse")
class MSE(Similarity):
    """Mean squared intensity difference, ``mean_x (F - W)^2``."""

    bounds = (0.0, None)

    @property
    def radius(self) -> int:
        """0: a pointwise loss."""
        return 0

    def loss(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return (fixed - warped).pow(2).flatten(1).mean(dim=1)
