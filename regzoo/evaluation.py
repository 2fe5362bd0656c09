"""Score displacement fields on a Learn2Reg split: Dice, TRE, SDlogJ, folding, time.

The same code scores a regzoo model (:func:`evaluate_model`) and displacement fields written
by any other tool (:func:`evaluate_displacements`, Learn2Reg naming
``disp_<fixed id>_<moving id>.nii.gz``, shape ``(*spatial, D)`` in voxels).
"""

from __future__ import annotations

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
from regzoo.io import atomic_write_text, read_displacement, write_csv
from regzoo.metrics import dice, jacobian_scores, target_registration_error
from regzoo.model import HyperRegistration
from regzoo.refine import refine as refine_output
from regzoo.spatial import warp_labels

__all__ = [
    "check_metric",
    "compare_refinement",
    "evaluate_displacements",
    "evaluate_identity",
    "evaluate_model",
    "item_labels",
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
)


METRIC_NEEDS = {
    "dice": ("moving_mask", "lung masks (masksTr/)"),
    "dice_labels": ("moving_labels", "label maps (labelsTr/)"),
    "tre_mm": ("moving_keypoints", "keypoints (keypointsTr/)"),
}


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
    if "fixed_keypoints" in item:
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


def _evaluate(
    dataset: Learn2RegDataset,
    predict: Callable[[Mapping[str, Any]], torch.Tensor],
    progress: bool,
) -> list[dict[str, Any]]:
    rows = []
    for item in tqdm(dataset, desc="evaluate", disable=not progress):
        start = time.perf_counter()
        displacement = predict(item)
        if displacement.is_cuda:  # GPU work is asynchronous: wait for it before timing
            torch.cuda.synchronize(displacement.device)
        seconds = time.perf_counter() - start
        row = {"fixed_id": item["fixed_id"], "moving_id": item["moving_id"]}
        row.update(score_pair(item, displacement))
        row["seconds"] = seconds
        rows.append(row)
    return rows


def evaluate_model(
    model: HyperRegistration,
    dataset: Learn2RegDataset,
    params: Mapping[str, float] | None = None,
    *,
    refine: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Register every pair of ``dataset`` with ``model`` at ``params``; one metrics row each.

    With ``refine > 0`` each network field is refined for that many iterations under the
    model's objective (:func:`regzoo.refine.refine`); ``seconds`` includes the refinement.
    """
    resolved = model.objective.resolve(params)
    device = model.device

    def predict(item: Mapping[str, Any]) -> torch.Tensor:
        fixed, moving = item["fixed"][None].to(device), item["moving"][None].to(device)
        if refine:
            return refine_output(
                model,
                fixed,
                moving,
                resolved,
                steps=refine,
                spacing=item.get("spacing"),
                labels=item_labels(item),
            ).displacement[0]
        with torch.no_grad():
            return model(fixed, moving, resolved).displacement[0]

    return _evaluate(dataset, predict, progress)


def item_labels(item: Mapping[str, Any]) -> torch.Tensor | None:
    """A dataset item's fixed label map as ``(1, 1, *spatial)``, or ``None`` without one."""
    labels = item.get("fixed_labels")
    return None if labels is None else labels[None]


def evaluate_identity(dataset: Learn2RegDataset, *, progress: bool = True) -> list[dict[str, Any]]:
    """Score the zero displacement on every pair (the "no registration" baseline)."""

    def predict(item: Mapping[str, Any]) -> torch.Tensor:
        return torch.zeros(item["fixed"].ndim - 1, *item["fixed"].shape[1:])

    return _evaluate(dataset, predict, progress)


def compare_refinement(
    model: HyperRegistration,
    dataset: Learn2RegDataset,
    params: Mapping[str, float] | None = None,
    *,
    refine: int = 30,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean metrics of identity, the network and the refined network at ``params``.

    Returns:
        ``{"identity": {...}, "network": {...}, "refined": {...}}``, each as from
        :func:`summarize` (``seconds`` per pair included).
    """
    return {
        "identity": summarize(evaluate_identity(dataset, progress=progress)),
        "network": summarize(evaluate_model(model, dataset, params, progress=progress)),
        "refined": summarize(
            evaluate_model(model, dataset, params, refine=refine, progress=progress)
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

    return _evaluate(dataset, predict, progress)


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


def write_report(rows: list[dict[str, Any]], path: str | Path, **extra: Any) -> tuple[Path, Path]:
    """Write ``path`` (JSON: per-pair rows, mean, extra fields) and the same rows as CSV.

    Both files are written to temporary names and renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {**extra, "mean": summarize(rows), "pairs": rows}
    csv_path = write_csv(rows, path.with_suffix(".csv"))
    return atomic_write_text(json.dumps(report, indent=2, allow_nan=False), path), csv_path
