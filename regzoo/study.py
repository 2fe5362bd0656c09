"""The sweep study that ``regzoo sweep`` runs: sweep the grid (an exact sweep also scores it
by the network alone, so the report says whether the network's choice agrees), choose the best
setting by a metric or a label-free criterion, optionally optimise the parameters per pair and
compare the network with refinement at the best setting, draw the best and worst settings and
write the report, as one output set.

The command line only parses its options and prints [`SweepStudy`][regzoo.study.SweepStudy]'s
summary.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regzoo._errors import InputError
from regzoo.criteria import needs_backward
from regzoo.data.learn2reg import Learn2RegDataset, sibling_path
from regzoo.evaluation import check_dimension, check_metric, compare_refinement
from regzoo.explore.command import explore_command
from regzoo.inference import read_image, read_pair
from regzoo.io import check_output_folder, output_folder
from regzoo.refinement import RefineOptions
from regzoo.registration_model import RegistrationModel
from regzoo.report import overlay_figure, write_sweep_report
from regzoo.sweeping import GridAxis, SweepResult, optimize_dataset, sweep

__all__ = ["SweepStudy", "parameter_title", "run_sweep_study"]


def parameter_title(params: Mapping[str, float]) -> str:
    """``lam=0.1, mu=1`` from full parameter names (what figures and summaries show)."""
    return ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" for k, v in params.items())


def _existing(image: str | Path, folder: str) -> str | None:
    """A Learn2Reg image's annotation in ``folder`` (``masksTr``, ``labelsTr``), if it exists."""
    path = sibling_path(image, folder)
    return str(path) if path is not None and path.is_file() else None


@dataclass
class SweepStudy:
    """What [`run_sweep_study`][regzoo.study.run_sweep_study] found and wrote.

    Attributes:
        result: the sweep over the grid.
        metric: the metric the report ranks by (and the best setting was chosen by, unless
            ``criterion`` chose it).
        criterion: the label-free criterion that chose the best setting (``None``: ``metric``).
        best: the best setting's row (parameters and mean metrics).
        comparison: network vs refined scores at the best setting (``refine > 0``).
        summary: the report's ``summary.md``.
    """

    result: SweepResult
    metric: str
    best: dict[str, Any]
    summary: Path
    comparison: dict[str, dict[str, float]] | None = field(default=None)
    criterion: str | None = None


def run_sweep_study(
    model: RegistrationModel,
    dataset: Learn2RegDataset,
    grid: Mapping[str, GridAxis | str],
    out: str | Path,
    *,
    metric: str | None = None,
    criterion: str | None = None,
    batch_size: int | None = None,
    refine: RefineOptions | None = None,
    refine_grid: RefineOptions | None = None,
    refine_options: Mapping[str, Any] | None = None,
    refine_similarities: Sequence[str] = (),
    max_folding: float | None = 0.0,
    optimize: bool = False,
    optimize_steps: int = 30,
    figure: bool = False,
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
) -> SweepStudy:
    """Sweep ``grid`` on ``dataset`` and write the report into ``out`` (one output set).

    Args:
        model: a trained model.
        dataset: the pairs, with annotations (masks, label maps, keypoints) where present.
        grid: parameter axes ([`regzoo.sweeping.parse_grid`][regzoo.sweeping.parse_grid]).
        out: the report folder (replaced whole).
        metric: the metric that chooses the best setting (default: the result's own).
        criterion: choose the best setting by this label-free criterion
            ([`regzoo.criteria`][regzoo.criteria]) instead of a metric.
        batch_size: settings per network forward (``None``: the device's default,
            [`default_batch_size`][regzoo.sweeping.default_batch_size]).
        refine: the refinement of the comparison at the best setting
            ([`RefineOptions`][regzoo.refinement.RefineOptions]; ``None``: no comparison).
        refine_grid: refine every setting with these options (an exact sweep), not only the
            best one; the grid is then also scored by the network alone (one forward per
            setting), and the report says whether the network's ranking agrees with the
            refined one (``None``: the network's fields; ``True``, the former form: ``refine``'s
            options, with a ``DeprecationWarning``).
        refine_options: deprecated: the settings beyond the steps as a mapping (with an
            integer ``refine``, the former form).
        refine_similarities: two or more refinement similarities (with ``refine_grid``): the
            exact sweep refines every setting under each (a similarity axis, heat maps per
            similarity); the metric ranks similarities and parameters together, the
            criterion chooses the similarity first (by the consensus of the axis's
            similarities, [`SweepResult.choose`][regzoo.sweeping.SweepResult.choose]) and then
            the parameters; the comparison, figure and explore command use the chosen one
            (``refine``'s options with that ``similarity``).
        max_folding: the best setting's highest folded-voxel fraction (``0.0``: none folds,
            as ``--max-folding``'s default; ``None``: no limit).
        optimize: also optimise the parameters per pair through the hypernetwork.
        optimize_steps: its iterations.
        figure: draw the best and worst settings on the first pair and print the
            ``regzoo explore`` command of the best one.
        checkpoint: the model's file, named in the report and the explore command.
        data: the data set's folder, named in the report.

    Raises:
        InputError: a data set of another dimension than the model's, a metric the data
            cannot give, or a metric and a criterion together.
    """
    refine = RefineOptions.from_legacy(refine, refine_options, "run_sweep_study")
    if isinstance(refine_grid, bool):  # the former form: refine every setting as the best one
        if refine_grid and refine is None:
            raise InputError("--refine-grid needs --refine N (the iterations per setting)")
        warnings.warn(
            "run_sweep_study(refine_grid=True) is deprecated; pass refine_grid=RefineOptions(...)",
            DeprecationWarning,
            stacklevel=2,
        )
        refine_grid = refine if refine_grid else None
    refine_grid = RefineOptions.coerce(refine_grid, "run_sweep_study(refine_grid=...)")
    if refine_similarities and refine_grid is None:
        raise InputError(
            "several refinement similarities need an exact sweep: --refine-grid --refine N"
        )
    check_output_folder(out)  # a folder of the user's files is refused before any work
    check_dimension(model, dataset)
    if metric:
        check_metric(metric, dataset[0])
    if metric and criterion:
        raise InputError("give --metric or --criterion, not both")
    result = sweep(
        model,
        dataset,
        grid,
        batch_size=batch_size,
        refine=refine_grid,
        max_folding=max_folding,
        backward=needs_backward(criterion),
        refine_similarities=refine_similarities,
    )
    network = (
        sweep(model, dataset, grid, batch_size=batch_size, max_folding=max_folding)
        if refine_grid is not None
        else None
    )
    optimized = (
        optimize_dataset(model, dataset, names=result.names, steps=optimize_steps)
        if optimize
        else []
    )
    metric = metric or result.default_metric()
    best = result.choose(criterion) if criterion else result.best(metric)
    if result.similarities:  # what follows refines under the chosen similarity
        chosen_similarity = best["refine_similarity"]
        if refine is not None:
            refine = dataclasses.replace(refine, similarity=chosen_similarity)
        if refine_grid is not None:
            refine_grid = dataclasses.replace(refine_grid, similarity=chosen_similarity)
    comparison = None
    if refine is not None:
        chosen = {n: best[n] for n in result.names}
        comparison = compare_refinement(model, dataset, chosen, refine=refine)
    out = Path(out)
    with output_folder(out) as staging:
        overlay = explore = None
        if figure:
            ranked = result.ranked(metric)
            pick = [{n: r[n] for n in result.names} for r in (best, ranked[-1])]
            first = dataset[0]
            fixed_mask = _existing(first["fixed_path"], "masksTr")
            moving_mask = _existing(first["moving_path"], "masksTr")
            fixed_labels = _existing(first["fixed_path"], "labelsTr")
            fixed, moving, masks = read_pair(
                first["fixed_path"],
                first["moving_path"],
                segmentations={"mask": moving_mask} if moving_mask else {},
            )
            overlay = overlay_figure(
                model,
                fixed,
                moving,
                [
                    (f"best: {parameter_title(pick[0])}", pick[0]),
                    (f"worst: {parameter_title(pick[1])}", pick[1]),
                ],
                staging / "overlay.png",
                moving_mask=masks.get("mask"),
                fixed_mask=read_image(fixed_mask, what="mask") if fixed_mask else None,
                fixed_labels=fixed_labels,
                refine=refine_grid,
            )
            explore = explore_command(
                checkpoint if checkpoint is not None else "MODEL.ckpt",
                first["fixed_path"],
                first["moving_path"],
                fixed_seg=fixed_mask,
                moving_seg=moving_mask,
                fixed_labels=fixed_labels,
                params=pick[0],
                refine=refine_grid or refine,
            )
        write_sweep_report(
            result,
            staging,
            metric=metric,
            criterion=criterion,
            optimized=optimized,
            comparison=comparison,
            refine=refine,
            figure=overlay,
            explore=explore,
            network=network,
            model=str(checkpoint),
            data=str(data),
        )
    return SweepStudy(result, metric, best, out / "summary.md", comparison, criterion)
