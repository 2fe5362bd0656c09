"""Score displacement fields on a Learn2Reg split: Dice, TRE, SDlogJ, folding, time.

The same code scores a regzoo model ([`evaluate_model`][regzoo.evaluation.evaluate_model]) and
displacement fields written by any other tool
([`evaluate_displacements`][regzoo.evaluation.evaluate_displacements], Learn2Reg naming
``disp_<fixed id>_<moving id>.nii.gz``, shape ``(*spatial, D)`` in voxels).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from regzoo._errors import InputError, MissingFileError
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.io import REPORT_MARKER, output_files, read_displacement
from regzoo.metrics import dice, jacobian_scores, target_registration_error
from regzoo.refinement import RefineOptions, RefineTrace
from regzoo.refinement import refine as refine_output
from regzoo.registration_model import RegistrationModel, check_finite_field
from regzoo.spatial import warp_labels

__all__ = [
    "check_dimension",
    "check_metric",
    "compare_refinement",
    "evaluate_displacements",
    "evaluate_identity",
    "evaluate_model",
    "evaluate_predictor",
    "item_labels",
    "report_paths",
    "score_pair",
    "summarize",
    "write_report",
]

METRICS = (
    "dice",
    "dice_labels",
    "tre_mm",
    "tre_initial_mm",
    "sdlogj",
    "folding_fraction",
    "seconds",
    "refine_iterations",
)


METRIC_NEEDS = {
    "dice": ("moving_mask", "lung masks (masksTr/)"),
    "dice_labels": ("moving_labels", "label maps (labelsTr/)"),
    "tre_mm": ("moving_keypoints", "keypoints (keypointsTr/)"),
}


def check_dimension(model: RegistrationModel, dataset: Learn2RegDataset) -> None:
    """Check that ``dataset``'s images have the model's dimension (2D or 3D), before any work.

    Raises:
        InputError: naming the data set's first image and both dimensions.
    """
    if not len(dataset):
        return
    item = dataset[0]
    ndim = item["fixed"].ndim - 1
    if ndim != model.ndim:
        raise InputError(
            f"the model registers {model.ndim}D images, but the data set's images are {ndim}D "
            f"({item['fixed_path']}: {tuple(item['fixed'].shape[1:])}); use a {ndim}D model"
        )


def check_metric(metric: str, item: Mapping[str, Any]) -> None:
    """Check that ``metric`` can be measured on a dataset item (before any work).

    Raises:
        InputError: naming what the metric needs (masks, label maps or keypoints).
    """
    key, needs = METRIC_NEEDS.get(metric, (None, ""))
    if key is not None and key not in item:
        raise InputError(f"metric '{metric}' needs {needs}, which this data set does not have")


def score_pair(item: Mapping[str, Any], displacement: torch.Tensor) -> dict[str, float | None]:
    """Metrics of one displacement ``(D, *spatial)`` for a dataset item (with annotations).

    Dice uses the lung masks (``dice``) and label maps when present (``dice_labels``, mean
    over labels; ``None`` when both maps are empty, so the pair is left out of the mean); TRE
    is the mean keypoint distance in mm after and before registration.
    """
    displacement = displacement.float().cpu()
    row: dict[str, float | None] = {}
    for key, out in (("mask", "dice"), ("labels", "dice_labels")):
        if f"moving_{key}" in item:
            warped = warp_labels(item[f"moving_{key}"][None], displacement[None])[0, 0]
            scores = dice(warped, item[f"fixed_{key}"][0])
            row[out] = float(np.mean(list(scores.values()))) if scores else None
    if "fixed_keypoints" in item and not len(item["fixed_keypoints"]):
        row["tre_mm"] = row["tre_initial_mm"] = None  # no keypoints: undefined for this pair
    elif "fixed_keypoints" in item:
        fixed_kp, moving_kp = item["fixed_keypoints"], item["moving_keypoints"]
        spacing = item["spacing"]
        row["tre_mm"] = float(
            target_registration_error(fixed_kp, moving_kp, displacement, spacing).mean()
        )
        row["tre_initial_mm"] = float(
            target_registration_error(
                fixed_kp, moving_kp, torch.zeros_like(displacement), spacing
            ).mean()
        )
    row.update(jacobian_scores(displacement))  # one Jacobian for both scores
    return row


def evaluate_predictor(
    dataset: Learn2RegDataset,
    predict: Callable[[Mapping[str, Any]], torch.Tensor],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score ``predict(item) -> (D, *spatial)`` on every pair:
    [`score_pair`][regzoo.evaluation.score_pair] rows plus ``seconds``, the time ``predict`` took
    (any method: a network, a peer, a file reader).
    """
    rows = []
    for item in tqdm(dataset, desc="evaluate", disable=not progress):
        start = time.perf_counter()
        displacement = predict(item)
        check_finite_field(displacement, None, f"pair {item['fixed_id']} / {item['moving_id']}")
        if displacement.is_cuda:  # GPU work is asynchronous: wait for it before timing
            torch.cuda.synchronize(displacement.device)
        seconds = time.perf_counter() - start
        row = {"fixed_id": item["fixed_id"], "moving_id": item["moving_id"]}
        row.update(score_pair(item, displacement))
        row["seconds"] = seconds
        rows.append(row)
    return rows


def evaluate_model(
    model: RegistrationModel,
    dataset: Learn2RegDataset,
    params: Mapping[str, float] | None = None,
    *,
    refine: RefineOptions | None = None,
    progress: bool = True,
    refine_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Register every pair of ``dataset`` with ``model`` at ``params``; one metrics row each.

    With ``refine`` ([`RefineOptions`][regzoo.refinement.RefineOptions]) each network field is refined
    under the model's objective ([`regzoo.refinement.refine`][regzoo.refinement.refine]); ``seconds`` includes the
    refinement and each row says how many iterations ran (``refine_iterations``: fewer than
    ``refine.steps`` when it stopped early). An integer ``refine`` and ``refine_options``, the
    former form, are converted with a ``DeprecationWarning``.
    """
    options = RefineOptions.from_legacy(refine, refine_options, "evaluate_model")
    resolved = model.objective.resolve(params)
    device = model.device
    iterations: list[int] = []

    def predict(item: Mapping[str, Any]) -> torch.Tensor:
        fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
        if options is not None:
            trace = RefineTrace()
            displacement = refine_output(
                model,
                fixed,
                moving,
                resolved,
                options,
                spacing=item.get("spacing"),
                labels=item_labels(item),
                trace=trace,
            ).displacement[0]
            iterations.append(trace.total_iterations)
            return displacement
        with torch.no_grad():
            return model(fixed, moving, resolved, spacing=item.get("spacing")).displacement[0]

    rows = evaluate_predictor(dataset, predict, progress)
    if options is not None:
        for row, count in zip(rows, iterations, strict=True):
            row["refine_iterations"] = count
    return rows


def item_labels(item: Mapping[str, Any]) -> torch.Tensor | None:
    """A dataset item's fixed label map as ``(1, 1, *spatial)``, or ``None`` without one."""
    labels = item.get("fixed_labels")
    return None if labels is None else labels[None]


def evaluate_identity(dataset: Learn2RegDataset, *, progress: bool = True) -> list[dict[str, Any]]:
    """Score the zero displacement on every pair (the "no registration" baseline)."""

    def predict(item: Mapping[str, Any]) -> torch.Tensor:
        return torch.zeros(item["fixed"].ndim - 1, *item["fixed"].shape[1:])

    return evaluate_predictor(dataset, predict, progress)


def compare_refinement(
    model: RegistrationModel,
    dataset: Learn2RegDataset,
    params: Mapping[str, float] | None = None,
    *,
    refine: RefineOptions | None = None,
    refine_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean metrics of identity, the network and the refined network at ``params``, refined
    with ``refine`` (default ``RefineOptions()``, 30 steps; an integer and ``refine_options``,
    the former form, are converted with a ``DeprecationWarning``).

    Returns:
        ``{"identity": {...}, "network": {...}, "refined": {...}}``, each as from
        [`summarize`][regzoo.evaluation.summarize] (``seconds`` per pair included).
    """
    options = RefineOptions.from_legacy(refine, refine_options, "compare_refinement")
    return {
        "identity": summarize(evaluate_identity(dataset, progress=progress)),
        "network": summarize(evaluate_model(model, dataset, params, progress=progress)),
        "refined": summarize(
            evaluate_model(
                model,
                dataset,
                params,
                refine=options or RefineOptions(),
                progress=progress,
            )
        ),
    }


def evaluate_displacements(
    dataset: Learn2RegDataset, disp_dir: str | Path, *, progress: bool = True
) -> list[dict[str, Any]]:
    """Score ``disp_<fixed>_<moving>.nii.gz`` files of ``disp_dir`` (any registration tool).

    ``seconds`` is the time to read and score each file (the tool's own run time is unknown).
    """
    disp_dir = Path(disp_dir)
    if not disp_dir.is_dir():
        raise MissingFileError(f"displacement folder not found: {disp_dir}")

    def predict(item: Mapping[str, Any]) -> torch.Tensor:
        displacement = read_displacement(
            disp_dir / f"disp_{item['fixed_id']}_{item['moving_id']}.nii.gz"
        ).tensor()
        if displacement.shape[1:] != item["fixed"].shape[1:]:
            raise InputError(
                f"disp_{item['fixed_id']}_{item['moving_id']}.nii.gz: shape "
                f"{tuple(displacement.shape[1:])} differs from the fixed image "
                f"{tuple(item['fixed'].shape[1:])}"
            )
        return displacement

    return evaluate_predictor(dataset, predict, progress)


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Mean of every metric over the rows that have it.

    When a metric is undefined for some pairs (``None``, e.g. Dice of two empty masks), the
    summary says over how many pairs its mean was taken (``<metric>_pairs``).
    """
    rows = list(rows)
    summary: dict[str, float] = {}
    for metric in METRICS:
        present = [r for r in rows if metric in r]
        values = [r[metric] for r in present if r[metric] is not None and np.isfinite(r[metric])]
        if values:
            summary[metric] = float(np.mean(values))
        if present and len(values) < len(present):
            summary[f"{metric}_pairs"] = len(values)
    return summary


def report_paths(path: str | Path) -> tuple[Path, Path]:
    """The JSON report and its CSV for ``--out``: ``r.json`` -> (``r.json``, ``r.csv``);
    ``r.csv`` -> (``r.json``, ``r.csv``)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return path.with_suffix(".json"), path
    return path, path.with_suffix(".csv")


def _csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(rows: list[dict[str, Any]], path: str | Path, **extra: Any) -> tuple[Path, Path]:
    """Write the JSON report (per-pair rows, mean, extra fields) and the same rows as CSV.

    The two are one output set ([`regzoo.io.output_files`][regzoo.io.outputs.output_files]): both
    are composed first, written to temporary files beside their targets and renamed together, and an
    existing report is replaced only when regzoo wrote it. ``path`` names either file
    ([`report_paths`][regzoo.evaluation.report_paths]).

    Raises:
        OutputExistsError: a file of the set exists and regzoo did not write it.
        InputError: a non-finite value in the rows (nothing is written).
    """
    json_path, csv_path = report_paths(path)
    report = {REPORT_MARKER: "evaluate", **extra, "mean": summarize(rows), "pairs": rows}
    try:
        text = json.dumps(report, indent=2, allow_nan=False)
    except ValueError:
        raise InputError(
            "the report holds NaN or infinite values (a non-finite displacement?); "
            "nothing was written"
        ) from None
    output_files({json_path: text, csv_path: _csv_text(rows)})
    return json_path, csv_path
