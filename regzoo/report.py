"""Write a sweep's report folder: tables, JSON, heat maps and a markdown summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from regzoo.inference import register
from regzoo.io import Volume, atomic_write_text, write_csv
from regzoo.model import HyperRegistration
from regzoo.spatial import warp
from regzoo.sweep import SweepResult
from regzoo.viz import OverlayPanel, plot_registration, plot_sweep

__all__ = ["overlay_figure", "write_sweep_report"]


def overlay_figure(
    model: HyperRegistration,
    fixed: Volume,
    moving: Volume,
    settings: Sequence[tuple[str, Mapping[str, float]]],
    out: Path,
    *,
    moving_mask: Volume | None = None,
    fixed_mask: Volume | None = None,
    fixed_labels: Volume | str | Path | None = None,
    refine: int = 0,
) -> Path:
    """Figure of one pair registered at several settings ``[(title, params), ...]``.

    Each setting is registered by the network and then refined ``refine`` iterations; each row
    shows the warped image (with the warped mask's contour), the deformation grid, the
    Jacobian determinant and, given the fixed label map of a model with per-label parameters,
    the parameter maps (:func:`regzoo.viz.plot_registration`).
    """
    panels = []
    for title, params in settings:
        result = register(
            model,
            fixed,
            moving,
            refine=refine,
            fixed_labels=fixed_labels,
            **params,  # type: ignore[arg-type]  # parameter names, never register's options
        )
        warped_mask = None
        if moving_mask is not None:
            warped_mask = warp(
                moving_mask.tensor()[None, None], result.displacement[None], mode="nearest"
            )[0, 0]
        panels.append(
            OverlayPanel(
                title,
                result.displacement,
                result.warped,
                result.jacobian_determinant,
                warped_mask,
                result.parameter_maps,
            )
        )
    return plot_registration(
        fixed.tensor(),
        moving.tensor(),
        panels,
        out,
        fixed_mask=None if fixed_mask is None else fixed_mask.tensor(),
        moving_mask=None if moving_mask is None else moving_mask.tensor(),
        window=model.config.data.intensity_window,
    )


def _fmt(params: dict[str, Any], names: Sequence[str]) -> str:
    return ", ".join(f"{n} = {params[n]:.4g}" for n in names)


def _cell(scores: Mapping[str, float], metric: str, fmt: str = ".4f") -> str:
    return format(scores[metric], fmt) if metric in scores else "-"


def write_sweep_report(
    result: SweepResult,
    out_dir: str | Path,
    *,
    metric: str,
    optimized: Sequence[dict[str, Any]] = (),
    comparison: Mapping[str, Mapping[str, float]] | None = None,
    refine_steps: int = 0,
    figure: Path | None = None,
    explore: str | None = None,
    **meta: Any,
) -> Path:
    """Write ``metrics.csv`` (per setting and pair), ``settings.csv`` (means),
    ``sweep.json`` (everything, with the best parameters for the data set and per pair),
    ``heatmap.png`` (one or two swept parameters) and ``summary.md``; return the summary path.

    ``comparison`` (from :func:`regzoo.evaluation.compare_refinement`) adds the table of
    identity / network / refined at the best setting; ``explore``, a ``regzoo explore``
    command, a section that opens the best setting in the browser explorer.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    best = result.best(metric)
    per_pair = result.best_per_pair(metric)
    write_csv(result.rows, out / "metrics.csv")
    write_csv(result.settings, out / "settings.csv")
    heatmap = plot_sweep(result, out / "heatmap.png") if len(result.names) <= 2 else None
    payload = {
        **meta,
        "metric": metric,
        "names": result.names,
        "axes": result.axes,
        "best": best,
        "best_per_pair": per_pair,
        "optimized_per_pair": list(optimized),
        "comparison": dict(comparison or {}),
        "refine_steps": refine_steps,
        "settings": result.settings,
    }
    atomic_write_text(json.dumps(payload, indent=2), out / "sweep.json")
    lines = [
        "# regzoo sweep report",
        "",
        f"- model: `{meta.get('model', '?')}`",
        f"- data: `{meta.get('data', '?')}` ({len(per_pair)} pairs, {len(result.settings)} settings)",
        f"- criterion: mean `{metric}`"
        + (
            ""
            if result.max_folding is None
            else f", among settings with at most {result.max_folding:g} folded voxels"
        ),
        "",
        "## Best parameters for the data set",
        "",
        f"**{_fmt(best, result.names)}**",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in best.items() if k not in result.names],
        "",
        "## Best parameters per pair",
        "",
        "| fixed | moving | parameters | " + metric + " |",
        "|---|---|---|---|",
        *[
            f"| {r['fixed_id']} | {r['moving_id']} | {_fmt(r, result.names)} | {r[metric]:.4f} |"
            for r in per_pair
        ],
    ]
    if comparison:
        lines += [
            "",
            f"## At the best setting: identity, network, refined ({refine_steps} iterations)",
            "",
            "| method | TRE (mm) | Dice | SDlogJ | folded voxels | seconds per pair |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {method} | {_cell(s, 'tre_mm')} | {_cell(s, 'dice')} | {_cell(s, 'sdlogj')} | "
            f"{_cell(s, 'folding_fraction', '.2%')} | {_cell(s, 'seconds', '.2f')} |"
            for method, s in comparison.items()
        ]
    if optimized:
        lines += [
            "",
            "## Per-pair optimisation (gradient descent through the hypernetwork)",
            "",
            "| fixed | moving | parameters | final criterion |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {o['fixed_id']} | {o['moving_id']} | {_fmt(o['params'], result.names)} | "
            f"{o['criterion']} = {o['history'][-1]:.4f} |"
            for o in optimized
        ]
    if heatmap is not None:
        lines += ["", "## Heat maps", "", "![heat maps](heatmap.png)"]
    if figure is not None:
        lines += ["", "## Best and worst setting on the first pair", "", "![overlay](overlay.png)"]
    if explore is not None:
        lines += [
            "",
            "## Explore the best setting in the browser",
            "",
            "Slide the parameters around it and watch the first pair re-register "
            "(needs `pip install 'regzoo[explore]'`):",
            "",
            "```bash",
            explore,
            "```",
        ]
    summary = out / "summary.md"
    atomic_write_text("\n".join(lines) + "\n", summary)
    return summary
