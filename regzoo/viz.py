"""Figures: parameter heat maps (the paper's Fig. 3) and registration overlays (Fig. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from regzoo.io import atomic_path
from regzoo.sweeping import SweepResult

__all__ = ["OverlayPanel", "plot_registration", "plot_sweep"]

METRIC_LABELS = {
    "dice": "mean Dice (lung)",
    "dice_labels": "mean Dice (labels)",
    "tre_mm": "mean TRE (mm)",
    "sdlogj": "SDlogJ",
    "folding_fraction": "folded voxels (fraction)",
}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def _cell_edges(values: Sequence[float], scale: str = "linear") -> np.ndarray:
    """Edges of heat-map cells centred on grid ``values`` (midpoints on the axis's scale)."""
    centres = np.log10(values) if scale == "log" else np.asarray(values, dtype=float)
    if len(centres) > 1:
        middle = (centres[1:] + centres[:-1]) / 2
        edges = np.concatenate(
            [[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]]
        )
    else:
        edges = np.array([centres[0] - 0.5, centres[0] + 0.5])
    return 10.0**edges if scale == "log" else edges


def plot_sweep(result: SweepResult, path: str | Path, metrics: Sequence[str] | None = None) -> Path:
    """Heat maps (two swept parameters) or curves (one) of mean metrics; best point marked.

    By default: Dice, TRE and SDlogJ (whichever were scored); the folding fraction is in the
    metric tables.

    Raises:
        ValueError: with more than two swept parameters (use the metric table instead).
    """
    available = [m for m in METRIC_LABELS if result.settings and m in result.settings[0]]
    default = [m for m in available if m != "folding_fraction"]  # folding: see the table
    metrics = [m for m in (metrics or default) if m in available]
    if len(result.names) > 2:
        raise ValueError("plot_sweep(): figures cover one or two swept parameters")
    if result.similarities:
        raise ValueError(
            "plot_sweep(): a sweep with a similarity axis is drawn one similarity at a time "
            "(result.part(similarity))"
        )
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = result.metric_grid(metric)
        best = result.best(metric)
        if len(result.names) == 1:
            ax.plot(result.axes[0], values, marker="o")
            ax.axvline(best[result.names[0]], color="tab:red", linestyle="--")
            ax.set_xscale(result.scales[0])
            ax.set_xlabel(result.names[0])
            ax.set_ylabel(METRIC_LABELS[metric])
        else:
            (x, y), (x_scale, y_scale) = result.axes, result.scales
            image = ax.pcolormesh(
                _cell_edges(x, x_scale), _cell_edges(y, y_scale), values.T, cmap="viridis"
            )
            fig.colorbar(image, ax=ax)
            ax.plot(best[result.names[0]], best[result.names[1]], "r*", markersize=12)
            ax.set_xscale(x_scale)
            ax.set_yscale(y_scale)
            ax.set_xlabel(result.names[0])
            ax.set_ylabel(result.names[1])
        ax.set_title(METRIC_LABELS[metric])
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class OverlayPanel:
    """One parameter setting for [`plot_registration`][regzoo.viz.plot_registration]."""

    title: str
    displacement: torch.Tensor  # (D, *spatial)
    warped: torch.Tensor  # (*spatial)
    jacobian_determinant: torch.Tensor  # (*spatial)
    warped_mask: torch.Tensor | None = None
    parameter_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (*spatial)


def _grid_lines(ax: Axes, flow2d: np.ndarray, step: int) -> None:
    """Draw the deformed grid ``x + u(x)`` of a 2D in-plane displacement ``(2, H, W)``."""
    h, w = flow2d.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    py, px = ys + flow2d[0], xs + flow2d[1]
    for i in range(0, h, step):
        ax.plot(px[i], py[i], color="k", linewidth=0.6)
    for j in range(0, w, step):
        ax.plot(px[:, j], py[:, j], color="k", linewidth=0.6)
    ax.set_xlim(0, w - 1)
    ax.set_ylim(0, h - 1)


def plot_registration(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    panels: Sequence[OverlayPanel],
    path: str | Path,
    *,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
    axis: int = 1,
    window: tuple[float, float] = (-1000.0, 500.0),
) -> Path:
    """A figure like the paper's Fig. 4 for one pair and one or more parameter settings.

    Top row: fixed and moving slices with their mask contours. One row per setting: the warped
    image with the fixed mask (red) and warped mask (yellow) contours, the deformation grid,
    the Jacobian determinant map and, beside it, each spatial parameter map of the setting
    (per-label parameters, log colour scale). 3D images are cut through the middle of array
    ``axis`` (1 = coronal for Learn2Reg lung CT); 2D images are shown whole.
    """
    ndim = fixed.ndim

    def cut(volume: torch.Tensor) -> np.ndarray:
        array = volume.detach().cpu().float().numpy()
        return (array if ndim == 2 else np.take(array, array.shape[axis] // 2, axis=axis)).T

    in_plane = [0, 1] if ndim == 2 else [k for k in range(3) if k != axis]
    rows = 1 + len(panels)
    columns = 3 + max((len(panel.parameter_maps) for panel in panels), default=0)
    fig = Figure(figsize=(11 / 3 * columns, 3.6 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    style = {"cmap": "gray", "vmin": window[0], "vmax": window[1], "origin": "lower"}
    for ax, image, mask, title in (
        (axes[0, 0], fixed, fixed_mask, "fixed"),
        (axes[0, 1], moving, moving_mask, "moving"),
    ):
        ax.imshow(cut(image), **style)
        if mask is not None:
            ax.contour(cut(mask), levels=[0.5], colors="r", linewidths=0.8)
        ax.set_title(title)
    for ax in axes[0, 2:]:
        ax.axis("off")
    maps = [m for panel in panels for m in panel.parameter_maps.values()]
    positive = [float(m[m > 0].min()) for m in maps if bool((m > 0).any())]
    norm = (
        LogNorm(min(positive), max(float(m.max()) for m in maps))
        if positive and len(positive) == len(maps)
        else None
    )
    for row, panel in enumerate(panels, start=1):
        ax = axes[row, 0]
        ax.imshow(cut(panel.warped), **style)
        if fixed_mask is not None:
            ax.contour(cut(fixed_mask), levels=[0.5], colors="r", linewidths=0.8)
        if panel.warped_mask is not None:
            ax.contour(cut(panel.warped_mask), levels=[0.5], colors="y", linewidths=0.8)
        ax.set_title(f"warped: {panel.title}")
        flow = np.stack(
            [cut(panel.displacement[in_plane[1]]), cut(panel.displacement[in_plane[0]])]
        )
        _grid_lines(axes[row, 1], flow, step=max(2, flow.shape[1] // 24))
        axes[row, 1].set_title("deformation grid")
        jac = axes[row, 2].imshow(
            cut(panel.jacobian_determinant), cmap="RdBu_r", vmin=0, vmax=2, origin="lower"
        )
        fig.colorbar(jac, ax=axes[row, 2])
        axes[row, 2].set_title("Jacobian determinant")
        for ax, (name, value) in zip(axes[row, 3:], panel.parameter_maps.items(), strict=False):
            shown = ax.imshow(cut(value), cmap="magma", norm=norm, origin="lower")
            fig.colorbar(shown, ax=ax)
            ax.set_title(f"{name.split('.', 1)[-1]} map")
        for ax in axes[row, 3 + len(panel.parameter_maps) :]:
            ax.axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)
