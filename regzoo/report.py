"""Write a sweep's report folder: tables, JSON, heat maps and a markdown summary."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from regzoo._errors import InputError
from regzoo.data.learn2reg import Intensity
from regzoo.inference import register
from regzoo.io import Volume, atomic_write_text, write_csv
from regzoo.refinement import RefineOptions
from regzoo.registration_model import RegistrationModel
from regzoo.spatial import warp
from regzoo.sweeping import SweepResult

__all__ = ["overlay_figure", "write_sweep_report"]


def overlay_figure(
    model: RegistrationModel,
    fixed: Volume,
    moving: Volume,
    settings: Sequence[tuple[str, Mapping[str, float]]],
    out: Path,
    *,
    moving_mask: Volume | None = None,
    fixed_mask: Volume | None = None,
    fixed_labels: Volume | str | Path | None = None,
    refine: RefineOptions | None = None,
    refine_options: Mapping[str, Any] | None = None,
) -> Path:
    """Figure of one pair registered at several settings ``[(title, params), ...]``.

    Each setting is registered by the network and then refined with ``refine`` when given
    (``refine_options``, and an integer ``refine``: the former form, deprecated); each row
    shows the warped image (with the warped mask's contour), the deformation grid, the
    Jacobian determinant and, given the fixed label map of a model with per-label parameters,
    the parameter maps ([`regzoo.viz.plot_registration`][regzoo.viz.plot_registration]).
    """
    from regzoo.viz import OverlayPanel, plot_registration  # matplotlib only here

    options = RefineOptions.from_legacy(refine, refine_options, "overlay_figure")
    panels = []
    for title, params in settings:
        result = register(
            model,
            fixed,
            moving,
            refine=options,
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
        window=Intensity.from_config(model.config.data).display_range(fixed.tensor()),
    )


def _fmt(params: Mapping[str, Any], names: Sequence[str]) -> str:
    """``lam = 0.1, mu = 1``, then the refinement similarity when the setting has one."""
    text = ", ".join(f"{n} = {params[n]:.4g}" for n in names)
    similarity = params.get("refine_similarity")
    return text if similarity is None else f"{text}, refined under `{similarity}`"


def _slug(text: str) -> str:
    """A file-name part for a similarity text (``model + ngf`` -> ``model_ngf``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "similarity"


def _heat_maps(result: SweepResult, out: Path) -> list[tuple[str | None, Path]]:
    """``heatmap.png``, or one ``heatmap_<similarity>.png`` per similarity of the axis."""
    from regzoo.viz import plot_sweep  # matplotlib only when a figure is drawn

    if len(result.names) > 2:
        return []
    if not result.similarities:
        return [(None, plot_sweep(result, out / "heatmap.png"))]
    return [
        (spec, plot_sweep(result.part(spec), out / f"heatmap_{i}_{_slug(spec)}.png"))
        for i, spec in enumerate(result.similarities)
    ]


def _cell(scores: Mapping[str, float], metric: str, fmt: str = ".4f") -> str:
    return format(scores[metric], fmt) if metric in scores else "-"


def _agreement(exact: SweepResult, network: SweepResult, metric: str) -> dict[str, Any] | None:
    """Both sweeps' choices, each scored by the other sweep, and their grid distance."""
    if network.names != exact.names or network.axes != exact.axes:
        raise ValueError("the network and exact sweeps must share one grid")
    try:
        chosen = network.best(metric)
    except ValueError:  # every setting of the network folds beyond the limit
        return None
    best = exact.best(metric)
    if exact.similarities:  # compared under the similarity the exact sweep chose
        exact = exact.part(best["refine_similarity"])

    def same(settings: list[dict[str, Any]], at: dict[str, Any]) -> dict[str, Any]:
        return next(s for s in settings if all(s[n] == at[n] for n in exact.names))

    return {
        "network_choice": chosen,
        "exact_at_network_choice": same(exact.settings, chosen),
        "network_at_exact_choice": same(network.settings, best),
        "grid_steps": exact.grid_steps(chosen, best),
    }


def _choice_lines(
    result: SweepResult, best: Mapping[str, Any], ranking: str, criterion: str | None
) -> tuple[list[str], dict[str, Any]]:
    """The report's lines on what each criterion picks and on the folding limit, and the
    same as JSON."""

    def pick(sweep: SweepResult) -> dict[str, Any]:
        return sweep.choose(criterion) if criterion else sweep.best(ranking)

    lines: list[str] = []
    payload: dict[str, Any] = {}
    if result.max_folding is not None:
        free = pick(dataclasses.replace(result, max_folding=None))
        if any(free.get(n) != best.get(n) for n in result.keys):
            payload["unconstrained_best"] = free
            lines += [
                "",
                f"Without the folding limit {ranking} would choose "
                f"**{_fmt(free, result.names)}**, whose field folds "
                f"{free.get('folding_fraction', 0.0):.2%} of the voxels; the limit "
                f"(at most {result.max_folding:g}) removed it.",
            ]
    choices = result.choices()
    payload["choices"] = choices
    metrics = [m for m in ("tre_mm", "dice", "dice_labels") if m in best]
    lines += [
        "",
        "## What each criterion would choose",
        "",
        "Label-based criteria (dice, tre_mm) need masks or landmarks; the others see only the "
        "images and the fields (docs/choosing.md). Each choice is scored by every measured "
        "metric.",
        "",
        "| criterion | chosen setting | " + " | ".join(metrics) + " | folded voxels |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for name, setting in choices.items():
        mark = " (used)" if name == ranking else ""
        lines.append(
            f"| {name}{mark} | {_fmt(setting, result.names)} | "
            + "".join(f"{_cell(setting, m)} | " for m in metrics)
            + f"{_cell(setting, 'folding_fraction', '.2%')} |"
        )
    if result.similarities:
        lines += ["", _consensus_line(result, payload)]
    return lines, payload


def _consensus_line(result: SweepResult, payload: dict[str, Any]) -> str:
    """The report's sentence on how the label-free criteria chose the similarity of the axis
    (the fit of each similarity also goes into ``payload``)."""
    try:
        consensus = result.consensus_by_similarity()
    except InputError as exc:
        return f"The label-free criteria found no consensus among the similarities: {exc}."
    if not consensus:
        return (
            "This sweep did not record each similarity's gain (it predates them), so the "
            "label-free criteria judged every similarity by the model's own similarity."
        )
    payload["consensus_by_similarity"] = consensus
    winner = max(consensus, key=lambda spec: consensus[spec])
    fits = ", ".join(
        f"**`{spec}` {fit:.3f}**" if spec == winner else f"`{spec}` {fit:.3f}"
        for spec, fit in consensus.items()
    )
    return (
        "The label-free criteria choose the similarity first, by the consensus of the axis's "
        "similarities (the best setting's fit; 1 = the best match by every similarity at "
        f"once): {fits}; then the parameters among its settings."
    )


def _describe_refinement(options: RefineOptions | None) -> str:
    """``30 iterations, similarity mind_ssc, split 1:1:2``: the steps and the settings that
    differ from the defaults."""
    if options is None:
        return "no refinement"
    defaults = RefineOptions().to_dict()
    record = options.to_dict()
    words = [f"{options.steps} iterations"]
    for key, value in record.items():
        if key in ("steps", "int_steps", "regularize") or value == defaults[key]:
            continue
        if key == "split":
            value = ":".join(f"{share:g}" for share in value)
        words.append(f"{key} {value}")
    return ", ".join(words)


def write_sweep_report(
    result: SweepResult,
    out_dir: str | Path,
    *,
    metric: str,
    criterion: str | None = None,
    optimized: Sequence[dict[str, Any]] = (),
    comparison: Mapping[str, Mapping[str, float]] | None = None,
    refine: RefineOptions | None = None,
    figure: Path | None = None,
    explore: str | None = None,
    network: SweepResult | None = None,
    refine_steps: int = 0,
    refine_options: Mapping[str, Any] | None = None,
    **meta: Any,
) -> Path:
    """Write ``metrics.csv`` (per setting and pair), ``settings.csv`` (means),
    ``sweep.json`` (everything, with the best parameters for the data set and per pair),
    ``heatmap.png`` (one or two swept parameters; with a similarity axis one
    ``heatmap_<i>_<similarity>.png`` per similarity) and ``summary.md``; return the summary path.

    ``refine`` is the study's refinement ([`RefineOptions`][regzoo.refinement.RefineOptions]), recorded
    in ``sweep.json`` as ``refine`` ([`to_dict`][regzoo.refinement.RefineOptions.to_dict], ``null``
    without one); ``refine_steps`` and ``refine_options`` are its former, deprecated form.

    ``comparison`` (from [`regzoo.evaluation.compare_refinement`][regzoo.evaluation.compare_refinement]) adds the table of
    identity / network / refined at the best setting; ``explore``, a ``regzoo explore``
    command, a section that opens the best setting in the browser explorer. ``network``, the
    same grid scored by the network alone when ``result`` is an exact sweep (every setting
    refined), adds the two choices side by side and how many grid steps apart they are: whether
    the network's own ranking of parameters agrees with the physics.

    ``criterion`` names a label-free criterion ([`regzoo.criteria`][regzoo.criteria]) that chooses
    the best setting instead of ``metric``, which then only fills the tables. The summary shows what
    every applicable criterion would choose, and, under a folding limit, the setting the limit
    removed.
    """
    refine = RefineOptions.from_legacy(refine or refine_steps or None, refine_options, "report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if criterion:
        best = result.choose(criterion)
        per_pair = result.choose_per_pair(criterion)
    else:
        best = result.best(metric)
        per_pair = result.best_per_pair(metric)
    ranking = criterion or metric
    choice_lines, choice_payload = _choice_lines(result, best, ranking, criterion)
    write_csv(result.rows, out / "metrics.csv")
    write_csv(result.settings, out / "settings.csv")
    heatmaps = _heat_maps(result, out)
    payload = {
        **meta,
        "metric": metric,
        "criterion": ranking,
        "max_folding": result.max_folding,
        **choice_payload,
        "names": result.names,
        "axes": result.axes,
        "refine_similarities": result.similarities,
        "best": best,
        "best_per_pair": per_pair,
        "optimized_per_pair": list(optimized),
        "comparison": dict(comparison or {}),
        "refine": None if refine is None else refine.to_dict(),
        "settings": result.settings,
    }
    agreement = _agreement(result, network, metric) if network is not None else None
    if agreement is not None:
        payload["network_sweep"] = agreement
    atomic_write_text(json.dumps(payload, indent=2), out / "sweep.json")
    lines = [
        "# regzoo sweep report",
        "",
        f"- model: `{meta.get('model', '?')}`",
        f"- data: `{meta.get('data', '?')}` ({len(per_pair)} pairs, {len(result.settings)} settings)",
        (f"- criterion: label-free `{criterion}`" if criterion else f"- criterion: mean `{metric}`")
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
        *[
            f"| {k} | {v:.4f} |"
            for k, v in best.items()
            if k not in result.keys and isinstance(v, int | float)
        ],
        *choice_lines,
        "",
        "## Best parameters per pair",
        "",
        "| fixed | moving | parameters | " + metric + " |",
        "|---|---|---|---|",
        *[
            f"| {r['fixed_id']} | {r['moving_id']} | {_fmt(r, result.names)} | {_cell(r, metric)} |"
            for r in per_pair
        ],
    ]
    if comparison:
        lines += [
            "",
            "## At the best setting: identity, network, refined ("
            + _describe_refinement(refine)
            + ")",
            "",
            "| method | TRE (mm) | Dice | SDlogJ | folded voxels | seconds per pair |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {method} | {_cell(s, 'tre_mm')} | {_cell(s, 'dice')} | {_cell(s, 'sdlogj')} | "
            f"{_cell(s, 'folding_fraction', '.2%')} | {_cell(s, 'seconds', '.2f')} |"
            for method, s in comparison.items()
        ]
    if agreement is not None:
        steps = agreement["grid_steps"]
        lines += [
            "",
            "## The network's own sweep next to the exact sweep",
            "",
            f"| sweep | chosen setting | {metric} of the network | {metric} refined |",
            "|---|---|---|---|",
            f"| network only | {_fmt(agreement['network_choice'], result.names)} | "
            f"{agreement['network_choice'][metric]:.4f} | "
            f"{agreement['exact_at_network_choice'][metric]:.4f} |",
            f"| exact (refined) | {_fmt(best, result.names)} | "
            f"{agreement['network_at_exact_choice'][metric]:.4f} | {best[metric]:.4f} |",
            "",
            "Grid steps between the two choices: "
            + ", ".join(f"{n}: {k}" for n, k in steps.items())
            + (" (they agree within one step)" if max(steps.values()) <= 1 else ""),
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
    if heatmaps:
        lines += ["", "## Heat maps"]
        for spec, path in heatmaps:
            title = "" if spec is None else f"Refined under `{spec}`:\n\n"
            lines += ["", f"{title}![heat maps]({path.name})"]
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
