"""Turn volumes into what the explorer's page draws: 8-bit slices and deformation-grid nodes.

Every view is three orthogonal planes through one voxel. A plane cut along array axis ``k``
shows the two other axes ``(a, b)``, ``a < b``: its columns run along ``a`` and its rows along
``b`` from the top down, so ``b`` grows upwards on screen (as ``origin="lower"`` does in
[`regzoo.viz`][regzoo.viz]). Intensities travel as bytes (base64) and the page maps them through its
colour tables: a view of a 256^3 volume is about a megabyte, not tens of megabytes of JSON numbers.
"""

from __future__ import annotations

import base64

import numpy as np

__all__ = [
    "FOLDED",
    "deformation_grid",
    "encode_plane",
    "in_plane_axes",
    "labels_to_uint8",
    "plane",
    "scale_to_uint8",
]

FOLDED = 0
"""Byte of a Jacobian-determinant voxel that is folded (``det <= 0``); the page paints it apart."""


def in_plane_axes(axis: int) -> tuple[int, int]:
    """The two array axes ``(a, b)`` shown by a plane cut along ``axis`` (columns, rows)."""
    if axis not in (0, 1, 2):
        raise ValueError(f"in_plane_axes(): axis must be 0, 1 or 2, got {axis}")
    a, b = (k for k in range(3) if k != axis)
    return a, b


def scale_to_uint8(
    values: np.ndarray, low: float, high: float, *, reserve_folded: bool = False
) -> np.ndarray:
    """Map ``[low, high]`` linearly onto the bytes ``0..255`` (clipped).

    Args:
        values: any real array (a plane, usually).
        low: value shown as byte 0 (or 1 with ``reserve_folded``).
        high: value shown as byte 255.
        reserve_folded: map values ``<= 0`` to [`FOLDED`][regzoo.explore.render.FOLDED] and the rest
            onto ``1..255`` (for Jacobian determinants, where folding must stay visible).

    Raises:
        ValueError: if ``high <= low``.
    """
    if not high > low:
        raise ValueError(f"scale_to_uint8(): high must exceed low, got [{low}, {high}]")
    values = np.asarray(values, dtype=np.float64)
    unit = np.clip((values - low) / (high - low), 0.0, 1.0)
    if not reserve_folded:
        return np.rint(unit * 255).astype(np.uint8)
    return np.where(values <= 0, FOLDED, 1 + np.rint(unit * 254)).astype(np.uint8)


def labels_to_uint8(labels: np.ndarray) -> np.ndarray:
    """A label map as bytes; labels above 255 share byte values (only edges are drawn)."""
    return (np.rint(np.asarray(labels)).astype(np.int64) % 256).astype(np.uint8)


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The plane ``(rows, columns)`` of a ``(X, Y, Z)`` volume at ``index`` along ``axis``, in
    screen order (rows top-down along ``b`` reversed, columns along ``a``)."""
    if volume.ndim != 3:
        raise ValueError(f"plane(): expected a (X, Y, Z) volume, got shape {volume.shape}")
    cut = np.take(volume, index, axis=axis)  # (a, b)
    return np.ascontiguousarray(cut.T[::-1])


def encode_plane(image: np.ndarray) -> dict[str, int | str]:
    """A ``(rows, columns)`` byte image as ``{"width", "height", "data"}`` (base64 bytes)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(
            f"encode_plane(): expected a 2D uint8 image, got {image.dtype} {image.shape}"
        )
    return {
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "data": base64.b64encode(image.tobytes()).decode("ascii"),
    }


def deformation_grid(
    displacement: np.ndarray, axis: int, index: int, step: int
) -> dict[str, int | list[float]]:
    """Where the nodes of a regular grid in the plane go: ``x + u(x)`` in screen pixels.

    Nodes lie every ``step`` voxels along both in-plane axes; each maps to its position plus
    the in-plane displacement (the out-of-plane component is not shown). Coordinates are pixel
    centres of the plane returned by [`plane`][regzoo.explore.render.plane] (column ``a + u_a``, row
    ``(n_b - 1) - (b + u_b)``).

    Args:
        displacement: ``(3, X, Y, Z)`` voxels on the fixed grid.
        axis: the axis the plane cuts.
        index: the plane's position along ``axis``.
        step: node spacing in voxels (``>= 1``).

    Returns:
        ``{"columns", "rows", "x", "y"}``: the node counts along ``a`` and ``b`` and the flat
        row-major (``b`` outer, from the top) lists of node coordinates.
    """
    displacement = np.asarray(displacement)
    if displacement.ndim != 4 or displacement.shape[0] != 3:
        raise ValueError(
            f"deformation_grid(): expected a (3, X, Y, Z) field, got {displacement.shape}"
        )
    if step < 1:
        raise ValueError(f"deformation_grid(): step must be >= 1, got {step}")
    a, b = in_plane_axes(axis)
    cut = np.take(displacement, index, axis=axis + 1)  # (3, n_a, n_b)
    n_a, n_b = cut.shape[1:]
    ia, ib = np.arange(0, n_a, step), np.arange(0, n_b, step)[::-1]
    x = ia[:, None] + cut[a][np.ix_(ia, ib)]
    y = (n_b - 1) - (ib[None, :] + cut[b][np.ix_(ia, ib)])
    return {"columns": len(ia), "rows": len(ib), "x": _rounded(x.T), "y": _rounded(y.T)}


def _rounded(values: np.ndarray) -> list[float]:
    return np.round(values.astype(np.float64), 2).ravel().tolist()
