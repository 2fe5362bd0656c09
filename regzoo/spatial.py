"""Spatial operations on displacement fields, in 2D and 3D.

Convention (shared by the whole library): a displacement ``u`` is a tensor ``(B, D, *spatial)``
in voxels on the FIXED grid; fixed point ``x`` maps to moving point ``x + u(x)`` and channel
``k`` is the displacement along array axis ``k``. Images are ``(B, C, *spatial)``.

First derivatives ([`differences`][regzoo.spatial.differences], [`partials`][regzoo.spatial.partials], [`gradient`][regzoo.spatial.gradient],
[`jacobian_determinant`][regzoo.spatial.jacobian_determinant]) are forward differences and [`hessian`][regzoo.spatial.hessian] second forward
differences; [`laplacian`][regzoo.spatial.laplacian] is the centred three-point second difference per axis. All are
returned on the interior region where every difference is defined (each spatial size shrinks by
one per forward derivative order, by two for the Laplacian), with no zero padding: forward
differences are exact for linear fields (first order) and quadratic ones (second order), the
Laplacian for cubic ones. Only [`jacobian_determinant`][regzoo.spatial.jacobian_determinant] pads back to the field's shape, by
replicating its last slice along each axis (``pad=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "Spacing",
    "check_field",
    "check_image",
    "differences",
    "gradient",
    "hessian",
    "identity_grid",
    "integrate_velocity",
    "jacobian_determinant",
    "laplacian",
    "partials",
    "resize_flow",
    "sample_points",
    "spacing_tensor",
    "warp",
    "warp_labels",
]

Spacing = float | Sequence[float] | torch.Tensor | None


def check_field(u: torch.Tensor, caller: str, *, name: str = "u") -> int:
    """Check ``u`` is a displacement ``(B, D, *spatial)`` with ``D`` in {2, 3}; return ``D``.

    Raises:
        ValueError: naming ``caller`` and the shape received.
    """
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"{caller}() '{name}' must be a tensor, got {type(u).__name__}")
    ndim = u.ndim - 2
    if ndim not in (2, 3) or u.shape[1] != ndim:
        raise ValueError(
            f"{caller}() '{name}' must be a displacement of shape (B, D, *spatial) with D = 2 or 3 "
            f"spatial dims, got shape {tuple(u.shape)}"
        )
    if min(u.shape[2:]) < 2:
        raise ValueError(
            f"{caller}() '{name}' needs at least 2 voxels per axis, got {tuple(u.shape)}"
        )
    return ndim


def check_image(image: torch.Tensor, caller: str, *, name: str = "image") -> int:
    """Check ``image`` is ``(B, C, *spatial)`` with 2 or 3 spatial dims; return that number.

    Raises:
        ValueError: naming ``caller`` and the shape received.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{caller}() '{name}' must be a tensor, got {type(image).__name__}")
    if image.ndim not in (4, 5):
        raise ValueError(
            f"{caller}() '{name}' must have shape (B, C, *spatial) with 2 or 3 spatial dims, "
            f"got shape {tuple(image.shape)}"
        )
    return image.ndim - 2


def spacing_tensor(spacing: Spacing, ndim: int, like: torch.Tensor) -> torch.Tensor | None:
    """Return the voxel spacing as a tensor ``(ndim,)`` (or ``None`` for unit spacing)."""
    if spacing is None:
        return None
    values = torch.as_tensor(spacing, dtype=like.dtype, device=like.device).flatten()
    if values.numel() == 1:
        values = values.expand(ndim)
    if values.numel() != ndim or bool((values <= 0).any()):
        raise ValueError(f"spacing must be {ndim} positive values, got {spacing!r}")
    return values


def differences(
    u: torch.Tensor, spacing: Spacing = None, axes: Sequence[int] | None = None
) -> list[torch.Tensor]:
    """Forward differences of every channel along each axis, one tensor per axis.

    The values of [`gradient`][regzoo.spatial.gradient] without stacking them: the fused energies of
    [`regzoo.regularizers.functional`][regzoo.regularizers.functional] combine them directly, and
    one autograd node with a hand-written adjoint replaces the slicing (see ``docs/benchmarks.md``).

    Args:
        u: tensor ``(B, C, *spatial)`` with 2 or 3 spatial dims.
        spacing: optional voxel spacing (one value or one per axis); differences are divided
            by it.
        axes: the spatial axes to differentiate along (default: all, in order).

    Returns:
        One tensor ``(B, C, *(spatial - 1))`` per axis ``i``: ``d u / d x_i`` on the interior
        (every axis cropped by one voxel, as in [`gradient`][regzoo.spatial.gradient]).
    """
    axes = range(check_image(u, "differences", name="u")) if axes is None else axes
    return _differences(u, spacing, "differences", [(axis, None) for axis in axes])


def _window(
    sizes: Sequence[int], shift: int | None = None, channel: int | None = None
) -> tuple[slice | int, ...]:
    """Index of the interior ``[0, n - 1)`` of every axis, moved one voxel along ``shift``."""
    return (
        slice(None),
        slice(None) if channel is None else channel,
        *(slice(int(a == shift), int(a == shift) + n - 1) for a, n in enumerate(sizes)),
    )


class _ForwardDifferences(torch.autograd.Function):
    """``u(x + e_i) - u(x)`` on the interior, for each ``(axis i, channel)`` item.

    ``channel`` ``None`` differentiates every channel (output ``(B, C, *(s - 1))``), an index
    one channel (output ``(B, *(s - 1))``). One autograd node with the adjoint written out
    (``+g`` on the shifted window, ``-g`` on the interior, into one buffer): slicing and
    selecting by hand leaves one full-size zero-filled gradient per slice in the backward pass,
    which cost more than the energies themselves. The backward is made of differentiable
    operations, so second derivatives work too.
    """

    @staticmethod
    def forward(
        ctx: Any, u: torch.Tensor, items: tuple[tuple[int, int | None], ...]
    ) -> tuple[torch.Tensor, ...]:
        sizes = u.shape[2:]
        ctx.shape, ctx.items = u.shape, items
        return tuple(
            u[_window(sizes, axis, channel)] - u[_window(sizes, None, channel)]
            for axis, channel in items
        )

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        sizes = ctx.shape[2:]
        used = [(item, g) for item, g in zip(ctx.items, grads, strict=True) if g is not None]
        if not used:
            return None, None
        grad = used[0][1].new_zeros(ctx.shape)
        for (axis, channel), g in used:
            grad[_window(sizes, axis, channel)].add_(g)
            grad[_window(sizes, None, channel)].sub_(g)
        return grad, None


def _differences(
    u: torch.Tensor,
    spacing: Spacing,
    caller: str,
    items: Sequence[tuple[int, int | None]] | None = None,
) -> list[torch.Tensor]:
    ndim = check_image(u, caller, name="u")
    if min(u.shape[2:]) < 2:
        raise ValueError(f"{caller}() needs at least 2 voxels per axis, got {tuple(u.shape)}")
    step = spacing_tensor(spacing, ndim, u)
    items = tuple((axis, None) for axis in range(ndim)) if items is None else tuple(items)
    parts = _ForwardDifferences.apply(u, items)
    if step is None:
        return list(parts)
    return [diff / step[axis] for (axis, _), diff in zip(items, parts, strict=True)]


def partials(u: torch.Tensor, spacing: Spacing = None) -> list[list[torch.Tensor]]:
    """The Jacobian of a displacement as separate entries: ``[j][i] = d u_j / d x_i``.

    The values of [`gradient`][regzoo.spatial.gradient] (``gradient(u)[:, j, i]``), each ``(B,
    *(spatial - 1))``, from one autograd node (see [`differences`][regzoo.spatial.differences]).
    """
    ndim = check_field(u, "partials")
    items = [(i, j) for j in range(ndim) for i in range(ndim)]
    flat = _differences(u, spacing, "partials", items)
    return [flat[j * ndim : (j + 1) * ndim] for j in range(ndim)]


def gradient(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Forward-difference gradient of every channel.

    Args:
        u: tensor ``(B, C, *spatial)`` with 2 or 3 spatial dims.
        spacing: optional voxel spacing (one value or one per axis); differences are divided
            by it.

    Returns:
        Tensor ``(B, C, D, *(spatial - 1))`` whose entry ``[:, c, i]`` is ``d u_c / d x_i`` on
        the interior region where all forward differences exist.
    """
    return torch.stack(_differences(u, spacing, "gradient"), dim=2)


def hessian(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Second forward differences of every channel.

    Returns:
        Tensor ``(B, C, D, D, *(spatial - 2))`` with entry ``[:, c, i, j] = d^2 u_c / dx_i dx_j``
        (exact for quadratic fields).
    """
    first = gradient(u, spacing)  # (B, C, D, *s-1)
    channels, ndim = first.shape[1:3]
    second = gradient(first.flatten(1, 2), spacing)  # (B, C*D, D, *s-2)
    return second.unflatten(1, (channels, ndim))


def laplacian(u: torch.Tensor, spacing: Spacing = None) -> torch.Tensor:
    """Centred second-difference Laplacian of every channel.

    ``sum_i (u(x + e_i) - 2 u(x) + u(x - e_i)) / h_i^2``: each axis's second difference is
    centred at the same point ``x`` (unlike summing the diagonal of
    [`hessian`][regzoo.spatial.hessian], whose forward differences sit at different points and miss
    high-frequency fields).

    Returns:
        Tensor ``(B, C, *(spatial - 2))`` on the interior points that have both neighbours
        along every axis; exact for cubic fields.
    """
    ndim = check_image(u, "laplacian", name="u")
    sizes = u.shape[2:]
    if min(sizes) < 3:
        raise ValueError(f"laplacian() needs at least 3 voxels per axis, got {tuple(u.shape)}")
    step = spacing_tensor(spacing, ndim, u)
    interior = u
    for axis in range(ndim):
        interior = interior.narrow(2 + axis, 1, sizes[axis] - 2)
    total = torch.zeros_like(interior)
    for axis in range(ndim):
        dim = 2 + axis
        along = u
        for other in range(ndim):
            if other != axis:
                along = along.narrow(2 + other, 1, sizes[other] - 2)
        second = (
            along.narrow(dim, 2, sizes[axis] - 2)
            - 2 * along.narrow(dim, 1, sizes[axis] - 2)
            + along.narrow(dim, 0, sizes[axis] - 2)
        )
        total = total + (second if step is None else second / step[axis] ** 2)
    return total


def identity_grid(
    shape: Sequence[int], *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Voxel coordinates ``(D, *shape)``: entry ``[k, x]`` is ``x_k``."""
    axes = [torch.arange(n, device=device, dtype=dtype or torch.float32) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _normalized_sampling_grid(u: torch.Tensor, moving_shape: Sequence[int]) -> torch.Tensor:
    """Turn a voxel displacement into ``grid_sample``'s grid (last axis reversed, [-1, 1]).

    Channel ``k`` of the grid is ``(x_k + u_k) * s_k - 1`` with ``s_k = 2 / (m_k - 1)``: the
    identity part is a broadcast 1-D ramp and ``s_k`` a Python float, so each channel is one
    fused ``ramp + s_k * u_k`` written straight into the grid's layout (no full-size identity
    grid, no host-to-device copy of the scales).
    """
    shape = u.shape[2:]
    ndim = len(shape)
    # unbind, not u[:, k]: its backward is one stack, where each selection's backward would
    # fill a zero tensor of u's full size
    components = u.unbind(1)
    channels = []
    for k in reversed(range(ndim)):  # grid_sample wants (x, y, z): the last array axis first
        step = 2.0 / max(moving_shape[k] - 1, 1)
        ramp = torch.arange(shape[k], device=u.device, dtype=u.dtype) * step - 1.0
        ramp = ramp.view(*([1] * k), -1, *([1] * (ndim - 1 - k)))
        channels.append(torch.add(ramp, components[k], alpha=step))
    return torch.stack(channels, dim=-1)


def warp(
    image: torch.Tensor,
    u: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Resample ``image`` (on the moving grid) at ``x + u(x)`` (on the fixed grid).

    Args:
        image: moving image ``(B, C, *spatial_m)``.
        u: displacement ``(B, D, *spatial_f)`` in voxels of the moving grid.
        mode: ``"bilinear"`` (linear in 3D too) or ``"nearest"`` (label maps).
        padding_mode: ``grid_sample`` padding outside the moving domain.

    Returns:
        The warped image ``(B, C, *spatial_f)``, i.e. ``M(x + u(x))``.
    """
    ndim = check_field(u, "warp")
    if check_image(image, "warp") != ndim or image.shape[0] not in (1, u.shape[0]):
        raise ValueError(
            f"warp() 'image' {tuple(image.shape)} does not match displacement {tuple(u.shape)}"
        )
    grid = _normalized_sampling_grid(u, image.shape[2:])
    if image.shape[0] != u.shape[0]:
        image = image.expand(u.shape[0], *image.shape[1:])
    return F.grid_sample(
        image.to(grid.dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True
    )


def integrate_velocity(v: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of ``exp(v)`` for a stationary velocity ``v``.

    ``u_0 = v / 2^steps``, then ``steps`` times ``u <- u + u o (id + u)``.
    """
    check_field(v, "integrate_velocity", name="v")
    if steps < 0:
        raise ValueError(f"integrate_velocity() 'steps' must be >= 0, got {steps}")
    u = v / (2**steps)
    for _ in range(steps):
        u = u + warp(u, u, padding_mode="border")
    return u


def resize_flow(u: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a displacement to another grid size and rescale its voxel units.

    Grids are aligned at their corners (voxel ``0`` and voxel ``n - 1`` coincide), so the
    displacement along axis ``k`` is multiplied by ``(size_k - 1) / (n_k - 1)``.
    """
    ndim = check_field(u, "resize_flow")
    size = tuple(int(s) for s in size)
    if len(size) != ndim:
        raise ValueError(f"resize_flow() 'size' must have {ndim} entries, got {size}")
    if size == tuple(u.shape[2:]):
        return u
    mode = "bilinear" if ndim == 2 else "trilinear"
    # rescale on the input grid (interpolation is linear: same result, fewer voxels), with
    # Python floats (no host-to-device copy)
    factors = [(s - 1) / max(n - 1, 1) for s, n in zip(size, u.shape[2:], strict=True)]
    scaled = torch.stack([c * f for c, f in zip(u.unbind(1), factors, strict=True)], dim=1)
    return F.interpolate(scaled, size=size, mode=mode, align_corners=True)


def jacobian_determinant(u: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + u(x)``.

    Computed with forward differences; it is the same in voxel or physical units.

    Args:
        u: displacement ``(B, D, *spatial)``.
        pad: if True (default) the interior result is replicated into the last slice of each
            axis so the output has the field's shape ``(B, *spatial)``; otherwise the interior
            ``(B, *(spatial - 1))`` is returned.
    """
    ndim = check_field(u, "jacobian_determinant")
    d = partials(u)  # d[j][i] = d_i u_j
    # J = I + grad u, J[j][i] = delta_ij + d_i u_j; the determinant written out (cofactors):
    # elementwise, so much cheaper than a batched LU (torch.linalg.det), backward included
    J = [[d[j][i] + 1 if i == j else d[j][i] for i in range(ndim)] for j in range(ndim)]
    if ndim == 2:
        det = J[0][0] * J[1][1] - J[0][1] * J[1][0]
    else:
        det = (
            J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
            - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
            + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
        )
    if not pad:
        return det
    return F.pad(det.unsqueeze(1), [0, 1] * ndim, mode="replicate").squeeze(1)


def sample_points(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate ``field`` ``(B, C, *spatial)`` at voxel ``points`` ``(B, N, D)``.

    Returns:
        ``(B, N, C)``; points outside the grid take the border value.
    """
    ndim = check_image(field, "sample_points", name="field")
    if points.ndim != 3 or points.shape[-1] != ndim:
        raise ValueError(
            f"sample_points() 'points' must be (B, N, {ndim}), got {tuple(points.shape)}"
        )
    shape = field.shape[2:]
    scale = torch.tensor(
        [2.0 / max(n - 1, 1) for n in shape], device=field.device, dtype=field.dtype
    )
    grid = (points.to(field.dtype) * scale - 1.0).flip(-1)
    grid = grid.view(points.shape[0], points.shape[1], *([1] * (ndim - 1)), ndim)
    sampled = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return rearrange(sampled, "b c ... -> b (...) c")


def warp_labels(labels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map ``(B, 1, *spatial)`` by ``u`` without blocky artefacts.

    Each label's indicator is warped linearly and every voxel takes the label with the largest
    interpolated weight (smoother boundaries than nearest-neighbour warping; ties go to the
    lowest label). The labels are warped one at a time, so memory stays that of a few images
    whatever the number of labels (a full-size label map of a dozen tissues included).
    """
    check_image(labels, "warp_labels", name="labels")
    values = labels.long().unique()
    best: torch.Tensor | None = None
    chosen = torch.zeros(labels.shape, dtype=labels.dtype, device=labels.device)
    for value in values:
        weight = warp((labels == value).to(u.dtype), u, mode="bilinear", padding_mode="border")
        if best is None:
            best = weight
            chosen.fill_(int(value))
        else:
            higher = weight > best
            best = torch.where(higher, weight, best)
            chosen.masked_fill_(higher, int(value))
    return chosen
