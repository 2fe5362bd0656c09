"""Registration metrics: Dice, target registration error, SDlogJ, folding fraction.

Displacements are single fields ``(D, *spatial)`` in voxels on the fixed grid
(fixed ``x`` -> moving ``x + u(x)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from regzoo._errors import InputError
from regzoo.spatial import jacobian_determinant, sample_points

__all__ = [
    "dice",
    "folding_fraction",
    "jacobian_scores",
    "sdlogj",
    "target_registration_error",
]


def _batched(u: torch.Tensor) -> torch.Tensor:
    if u.ndim not in (3, 4) or u.shape[0] != u.ndim - 1:
        raise InputError(f"expected a displacement (D, *spatial), got shape {tuple(u.shape)}")
    return u.unsqueeze(0)


def dice(a: torch.Tensor, b: torch.Tensor, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` per label (labels > 0 present in either map).

    Two empty masks score 1.
    """
    if a.shape != b.shape:
        raise InputError(f"dice(): shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.long(), b.long()
    if labels is None:
        labels = sorted(set(torch.cat([a.unique(), b.unique()]).tolist()) - {0})
    scores = {}
    for label in labels:
        in_a, in_b = a == label, b == label
        total = int(in_a.sum() + in_b.sum())
        scores[int(label)] = 1.0 if total == 0 else 2.0 * float((in_a & in_b).sum()) / total
    return scores


def target_registration_error(
    fixed_points: torch.Tensor,
    moving_points: torch.Tensor,
    displacement: torch.Tensor,
    spacing: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Distance in mm between ``p + u(p)`` and the moving keypoints, per keypoint ``(N,)``.

    Args:
        fixed_points: ``(N, D)`` voxel coordinates in the fixed image.
        moving_points: ``(N, D)`` corresponding voxel coordinates in the moving image.
        displacement: ``(D, *spatial)`` voxels on the fixed grid (zeros give the initial TRE).
        spacing: ``(D,)`` voxel size in mm.
    """
    if fixed_points.shape != moving_points.shape or fixed_points.ndim != 2:
        raise InputError(
            f"target_registration_error(): keypoints must both be (N, D), got "
            f"{tuple(fixed_points.shape)} and {tuple(moving_points.shape)}"
        )
    u = _batched(displacement).float()
    moved = (
        fixed_points.float()
        + sample_points(u, fixed_points.float().unsqueeze(0).to(u.device))[0].cpu()
    )
    step = torch.as_tensor(spacing, dtype=torch.float32)
    return ((moved - moving_points.float()) * step).norm(dim=1)


def _determinant(displacement: torch.Tensor) -> torch.Tensor:
    return jacobian_determinant(_batched(displacement).double(), pad=False)


def _sdlogj(det: torch.Tensor) -> float:
    return float(det.clamp(1e-9, 1e9).log().std())


def _folding(det: torch.Tensor) -> float:
    return float((det <= 0).double().mean())


def sdlogj(displacement: torch.Tensor) -> float:
    """Standard deviation of ``log det J`` (determinants clipped to ``[1e-9, 1e9]``).

    Zero for any affine map; the Learn2Reg smoothness measure.
    """
    return _sdlogj(_determinant(displacement))


def folding_fraction(displacement: torch.Tensor) -> float:
    """Fraction of voxels whose Jacobian determinant is not positive (folded)."""
    return _folding(_determinant(displacement))


def jacobian_scores(displacement: torch.Tensor) -> dict[str, float]:
    """``{"sdlogj", "folding_fraction"}`` ([`sdlogj`][regzoo.metrics.sdlogj],
    [`folding_fraction`][regzoo.metrics.folding_fraction]) from one Jacobian computation."""
    det = _determinant(displacement)
    return {"sdlogj": _sdlogj(det), "folding_fraction": _folding(det)}
