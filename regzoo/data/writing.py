"""Writing a Learn2Reg-layout set: one case's files and the dataset JSON.

The synthetic phantom ([`regzoo.data.phantom`][regzoo.data.phantom]) and the real-anatomy chest
CT ([`regzoo.data.chest_ct`][regzoo.data.chest_ct]) write the same layout: per case the two
phases' image, lung mask, label map and keypoints, the true displacement (``gtdispTr``, voxels,
fixed grid, Learn2Reg's ``(*spatial, D)``), and one ``<NAME>_dataset.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regzoo.io import write_nifti

__all__ = ["PhantomCase", "write_case", "write_manifest"]


@dataclass
class PhantomCase:
    """One built pair: images in HU, lung masks, keypoints (voxels), the true motion and
    tissue label maps."""

    fixed: np.ndarray
    moving: np.ndarray
    fixed_mask: np.ndarray
    moving_mask: np.ndarray
    fixed_keypoints: np.ndarray
    moving_keypoints: np.ndarray
    displacement: np.ndarray  # (D, *shape), voxels, fixed grid
    spacing: tuple[float, ...]
    fixed_labels: np.ndarray
    moving_labels: np.ndarray


def _save_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    write_nifti(array, np.diag([*spacing, *([1.0] * (4 - len(spacing)))]), path)


def write_case(staging: Path, prefix: str, case_id: int, case: PhantomCase) -> dict[str, str]:
    """Write one case's files under ``staging`` (``imagesTr``, ``masksTr``, ``labelsTr``,
    ``keypointsTr``, ``gtdispTr``, which must exist) as ``<prefix>_<case>_<phase>``; return the
    pair's entry of the dataset JSON (``fixed`` is phase 0, ``moving`` phase 1)."""
    names = [f"{prefix}_{case_id:04d}_{phase:04d}" for phase in (0, 1)]
    for name, image, mask, labels, points in zip(
        names,
        (case.fixed, case.moving),
        (case.fixed_mask, case.moving_mask),
        (case.fixed_labels, case.moving_labels),
        (case.fixed_keypoints, case.moving_keypoints),
        strict=True,
    ):
        _save_nifti(image.astype(np.float32), case.spacing, staging / "imagesTr" / f"{name}.nii.gz")
        _save_nifti(mask, case.spacing, staging / "masksTr" / f"{name}.nii.gz")
        _save_nifti(labels, case.spacing, staging / "labelsTr" / f"{name}.nii.gz")
        np.savetxt(staging / "keypointsTr" / f"{name}.csv", points, delimiter=",", fmt="%.4f")
    disp = np.moveaxis(case.displacement, 0, -1)
    _save_nifti(disp, case.spacing, staging / "gtdispTr" / f"{prefix}_{case_id:04d}.nii.gz")
    return {"fixed": f"./imagesTr/{names[0]}.nii.gz", "moving": f"./imagesTr/{names[1]}.nii.gz"}


def write_manifest(
    staging: Path,
    name: str,
    description: str,
    labels: Mapping[str, int],
    pairs: Sequence[Mapping[str, str]],
    *,
    val: int,
    ndim: int,
    **extra: Any,
) -> None:
    """Write ``<name>_dataset.json``: the cases' files, the last ``val`` pairs as
    ``registration_val``, the label names, and ``extra`` (seed, shape, ...)."""
    manifest = {
        "name": name,
        "description": description,
        "tensorImageSize": {"0": f"{ndim}D"},
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(v): k for k, v in labels.items()}},
        "numTraining": 2 * len(pairs),
        "training": [
            {
                "image": p[k],
                "mask": p[k].replace("imagesTr", "masksTr"),
                "keypoints": p[k].replace("imagesTr", "keypointsTr").replace(".nii.gz", ".csv"),
            }
            for p in pairs
            for k in ("fixed", "moving")
        ],
        "training_paired_images": list(pairs[: len(pairs) - val]),
        "registration_val": list(pairs[len(pairs) - val :]),
        "registration_test": [],
        **extra,
    }
    (staging / f"{name}_dataset.json").write_text(json.dumps(manifest, indent=2))
