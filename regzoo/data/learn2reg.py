"""Datasets in the Learn2Reg layout (e.g. LungCT / NLST, and regzoo's phantom).

A dataset folder holds one ``*_dataset.json`` with ``training_paired_images``,
``registration_val`` (and optionally ``registration_test``) lists of ``{fixed, moving}`` image
paths, and the folders ``imagesTr/``, ``masksTr/`` (optional), ``keypointsTr/`` (optional,
CSV of voxel coordinates, one row per keypoint), ``labelsTr/`` (optional).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Learn2RegDataset", "case_id", "load_keypoints", "load_volume", "read_manifest"]

Split = Literal["train", "val", "test"]
SPLIT_KEYS = {
    "train": "training_paired_images",
    "val": "registration_val",
    "test": "registration_test",
}
CASE_PATTERN = re.compile(r"_(\d+)_(\d+)\.nii(\.gz)?$")


def read_manifest(root: str | Path) -> tuple[Path, dict[str, Any]]:
    """Find and parse the ``*_dataset.json`` of a Learn2Reg folder.

    Raises:
        FileNotFoundError: if the folder or its dataset JSON is missing.
        ValueError: if there are several dataset JSON files.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    manifests = sorted(root.glob("*_dataset.json"))
    if not manifests:
        raise FileNotFoundError(f"no *_dataset.json in {root} (expected the Learn2Reg layout)")
    if len(manifests) > 1:
        raise ValueError(f"several dataset JSON files in {root}: {[m.name for m in manifests]}")
    return root, json.loads(manifests[0].read_text())


def case_id(path: str | Path) -> str:
    """The case number of a Learn2Reg image name (``LungCT_0003_0001.nii.gz`` -> ``"0003"``)."""
    match = CASE_PATTERN.search(str(path))
    if match is None:
        return Path(path).name.split(".")[0]
    return match.group(1)


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume as float32 and its affine.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it holds NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = nib.load(str(path))
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    return data, image.affine


def load_keypoints(path: str | Path) -> np.ndarray:
    """Read a keypoint CSV ``(N, D)`` in voxel coordinates."""
    points = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    if points.size and not np.isfinite(points).all():
        raise ValueError(f"{path}: keypoints contain NaN or infinite values")
    return points


class Learn2RegDataset(Dataset):
    """Image pairs of one split of a Learn2Reg-layout folder.

    Each item is a dict with ``fixed`` and ``moving`` ``(1, *spatial)`` float32 images, CT
    intensities clipped to ``intensity_window`` and mapped to ``[0, 1]``; ``spacing`` ``(D,)``
    in mm; ``fixed_id``/``moving_id`` case numbers and ``fixed_path``/``moving_path``. With
    ``annotations=True`` it adds, where present, ``fixed_mask``/``moving_mask`` (masksTr),
    ``fixed_labels``/``moving_labels`` (labelsTr) and ``fixed_keypoints``/``moving_keypoints``
    ``(N, D)``.

    Args:
        root: dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        intensity_window: HU window ``(low, high)`` mapped to ``[0, 1]``.
        annotations: also load masks, labels and keypoints.
        cache: keep loaded volumes in memory.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split = "train",
        *,
        intensity_window: tuple[float, float] = (-1000.0, 500.0),
        annotations: bool = False,
        cache: bool = True,
    ) -> None:
        self.root, manifest = read_manifest(root)
        if split not in SPLIT_KEYS:
            raise ValueError(f"unknown split '{split}'; expected one of {sorted(SPLIT_KEYS)}")
        self.pairs = [
            (self.root / p["fixed"], self.root / p["moving"])
            for p in manifest.get(SPLIT_KEYS[split], [])
        ]
        if not self.pairs:
            raise ValueError(f"{self.root}: the split '{split}' ({SPLIT_KEYS[split]}) has no pairs")
        low, high = intensity_window
        if not high > low:
            raise ValueError(f"intensity_window must have high > low, got {intensity_window}")
        self.window = (float(low), float(high))
        self.annotations = annotations
        self.cache = cache
        self._cache: dict[Path, dict[str, Any]] = {}  # a plain dict: picklable for workers

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path) -> dict[str, Any]:
        if path in self._cache:
            return self._cache[path]
        item = self._read(path)
        if self.cache:
            self._cache[path] = item
        return item

    def _read(self, path: Path) -> dict[str, Any]:
        data, affine = load_volume(path)
        low, high = self.window
        image = (np.clip(data, low, high) - low) / (high - low)
        item: dict[str, Any] = {
            "image": torch.from_numpy(image[None].astype(np.float32)),
            "spacing": torch.tensor(np.linalg.norm(affine[:3, :3], axis=0), dtype=torch.float32),
        }
        if self.annotations:
            for key, folder in (("mask", "masksTr"), ("labels", "labelsTr")):
                sibling = Path(str(path).replace("imagesTr", folder))
                if sibling != path and sibling.is_file():
                    annotation = np.rint(load_volume(sibling)[0])
                    if annotation.shape != data.shape:
                        raise ValueError(
                            f"{sibling}: shape {annotation.shape} differs from its image "
                            f"{path.name} {data.shape}"
                        )
                    item[key] = torch.from_numpy(annotation[None].astype(np.int64))
            keypoints = Path(
                str(path).replace("imagesTr", "keypointsTr").replace(".nii.gz", ".csv")
            )
            if keypoints != path and keypoints.is_file():
                points = load_keypoints(keypoints)
                outside = (points < -0.5) | (points > np.array(data.shape) - 0.5)
                if outside.any():
                    row = int(np.argmax(outside.any(axis=1)))
                    raise ValueError(
                        f"{keypoints}: keypoint {row + 1} at {points[row].tolist()} lies outside "
                        f"its image {path.name} of shape {data.shape} (voxel coordinates)"
                    )
                item["keypoints"] = torch.from_numpy(points)
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        fixed_path, moving_path = self.pairs[index]
        fixed, moving = self._load(fixed_path), self._load(moving_path)
        if fixed["image"].shape != moving["image"].shape:
            raise ValueError(
                f"pair {fixed_path.name} / {moving_path.name}: shapes differ "
                f"{tuple(fixed['image'].shape[1:])} vs {tuple(moving['image'].shape[1:])}"
            )
        item: dict[str, Any] = {
            "fixed": fixed["image"],
            "moving": moving["image"],
            "spacing": fixed["spacing"],
            "fixed_id": case_id(fixed_path),
            "moving_id": case_id(moving_path),
            "fixed_path": str(fixed_path),
            "moving_path": str(moving_path),
        }
        for key in ("mask", "labels", "keypoints"):
            if key in fixed and key in moving:
                item[f"fixed_{key}"] = fixed[key]
                item[f"moving_{key}"] = moving[key]
        return item
