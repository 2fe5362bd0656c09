"""Datasets in the Learn2Reg layout (e.g. LungCT / NLST, and regzoo's phantom).

A dataset folder holds one ``*_dataset.json`` with ``training_paired_images``,
``registration_val`` (and optionally ``registration_test``) lists of ``{fixed, moving}`` image
paths, and the folders ``imagesTr/``, ``masksTr/`` (optional), ``keypointsTr/`` (optional,
CSV of voxel coordinates, one row per keypoint), ``labelsTr/`` (optional).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from regzoo._errors import InputError, MissingFileError
from regzoo.io import check_same_grid, read_volume

__all__ = [
    "INTENSITY_KINDS",
    "Intensity",
    "Learn2RegDataset",
    "case_id",
    "load_keypoints",
    "normalize_intensity",
    "read_label_names",
    "read_manifest",
    "sibling_path",
]

IMAGES = "imagesTr"


def sibling_path(image: str | Path, folder: str, *, suffix: str = ".nii.gz") -> Path | None:
    """A Learn2Reg image's annotation in another folder of its dataset:
    ``imagesTr/X.nii.gz`` -> ``<folder>/X<suffix>`` (``masksTr``, ``labelsTr``,
    ``keypointsTr`` with ``.csv``). ``None`` for an image outside an ``imagesTr`` folder.
    Whether the file exists is the caller's question."""
    path = Path(image)
    if path.parent.name != IMAGES or not path.name.endswith(".nii.gz"):
        return None
    return path.parent.parent / folder / (path.name.removesuffix(".nii.gz") + suffix)


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
        MissingFileError: if the folder or its dataset JSON is missing.
        InputError: if there are several dataset JSON files, or the file is not a JSON object
            whose pair lists hold ``{fixed, moving}`` entries (the message names the file).
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"dataset folder not found: {root}")
    manifests = sorted(root.glob("*_dataset.json"))
    if not manifests:
        raise MissingFileError(f"no *_dataset.json in {root} (expected the Learn2Reg layout)")
    if len(manifests) > 1:
        raise InputError(f"several dataset JSON files in {root}: {[m.name for m in manifests]}")
    path = manifests[0]
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object, got a {type(manifest).__name__}")
    for key in SPLIT_KEYS.values():
        pairs = manifest.get(key, [])
        if not isinstance(pairs, list) or not all(
            isinstance(p, dict)
            and isinstance(p.get("fixed"), str)
            and isinstance(p.get("moving"), str)
            for p in pairs
        ):
            raise InputError(f'{path}: \'{key}\' must be a list of {{"fixed": ..., "moving": ...}}')
    return root, manifest


def read_label_names(root: str | Path) -> dict[str, int]:
    """The label names of a dataset: ``name -> value`` from its JSON's ``labels`` mapping.

    The mapping is written as in the Medical Segmentation Decathlon, ``{"0": "background",
    "1": "lung", ...}``; value 0 (background) is left out.

    Raises:
        InputError: if the dataset JSON has no ``labels`` mapping or it is malformed.
    """
    root, manifest = read_manifest(root)
    labels = manifest.get("labels")
    where = f"{root}: the dataset JSON's 'labels'"
    if not isinstance(labels, dict) or not labels:
        raise InputError(
            f'{root}: the dataset JSON has no \'labels\' mapping ({{"1": "lung", ...}}) to '
            "name the values of its label maps; add one or set data.labels"
        )
    names: dict[str, int] = {}
    for value, name in labels.items():
        if not (isinstance(value, str) and value.isdigit() and isinstance(name, str)):
            raise InputError(f"{where} must map label values to names, got {value!r}: {name!r}")
        if name in names:
            raise InputError(f"{where} names '{name}' twice")
        if int(value) > 0:
            names[name] = int(value)
    return names


def normalize_intensity(image: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """Clip to the intensity ``window`` ``(low, high)`` (HU for CT) and map it to ``[0, 1]``."""
    low, high = window
    return (image.clamp(low, high) - low) / (high - low)


INTENSITY_KINDS = ("window", "percentile", "zscore")
"""How raw intensities are normalised for the network (``data.intensity``)."""


@dataclass(frozen=True)
class Intensity:
    """How raw intensities become the network's input: the one normalisation that training,
    evaluation, the sweep, ``register`` and the explorer apply (``data.intensity`` and its
    settings, stored with the config in every checkpoint).

    Attributes:
        kind: ``"window"``: clip to ``window`` (HU for CT) and map it to ``[0, 1]``;
            ``"percentile"``: map the image's ``percentiles`` to ``[0, 1]`` (torchio's
            ``RescaleIntensity``, e.g. MRI); ``"zscore"``: zero mean, unit variance (torchio's
            ``ZNormalization``).
        window: ``(low, high)`` of ``"window"``.
        percentiles: ``(low, high)`` of ``"percentile"``, in ``[0, 100]``.
    """

    kind: str = "window"
    window: tuple[float, float] = (-1000.0, 500.0)
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.kind not in INTENSITY_KINDS:
            raise InputError(
                f"intensity must be one of {', '.join(INTENSITY_KINDS)}, got {self.kind!r}"
            )
        low, high = self.window
        if not high > low:
            raise InputError(f"intensity_window must have high > low, got {tuple(self.window)}")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise InputError(
                "percentiles must be (low, high) with 0 <= low < high <= 100, got "
                f"{tuple(self.percentiles)}"
            )

    @classmethod
    def from_config(cls, data: Any) -> Intensity:
        """The normalisation a config's ``data`` section describes (configs and checkpoints
        written before ``data.intensity`` existed use their ``intensity_window``)."""
        return cls(
            kind=getattr(data, "intensity", "window"),
            window=tuple(data.intensity_window),
            percentiles=tuple(getattr(data, "percentiles", (0.5, 99.5))),
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """The normalised image, float32, same shape ``(*spatial)`` (2D or 3D)."""
        image = image.float()
        if self.kind == "window":
            return normalize_intensity(image, self.window)
        import torchio as tio

        volume = image[None] if image.ndim == 3 else image[None, ..., None]  # torchio is 4D
        transform = (
            tio.RescaleIntensity(out_min_max=(0.0, 1.0), percentiles=self.percentiles)
            if self.kind == "percentile"
            else tio.ZNormalization()
        )
        out = transform(tio.ScalarImage(tensor=volume)).data.float()
        return out[0] if image.ndim == 3 else out[0, ..., 0]

    def display_range(self, image: torch.Tensor) -> tuple[float, float]:
        """The raw intensities shown from black to white: the window, or the image's
        ``percentiles`` (0.5 and 99.5 for ``zscore``)."""
        if self.kind == "window":
            return float(self.window[0]), float(self.window[1])
        low, high = self.percentiles if self.kind == "percentile" else (0.5, 99.5)
        values = image.float().flatten()
        if values.numel() > 1_000_000:
            values = values[:: values.numel() // 1_000_000 + 1]
        lo, hi = torch.quantile(values, torch.tensor([low / 100, high / 100])).tolist()
        return float(lo), float(hi if hi > lo else lo + 1.0)


def case_id(path: str | Path) -> str:
    """The case number of a Learn2Reg image name (``LungCT_0003_0001.nii.gz`` -> ``"0003"``)."""
    match = CASE_PATTERN.search(str(path))
    if match is None:
        return Path(path).name.split(".")[0]
    return match.group(1)


def load_keypoints(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a keypoint CSV ``(N, D)`` in voxel coordinates.

    Args:
        path: the CSV file (one row per keypoint, no header).
        shape: the image's spatial shape: the points must lie inside it and have ``D`` columns.

    Raises:
        InputError: for a header row or other text, NaN values, or points outside ``shape``
            (the message names the file and the row).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not warned about
            warnings.simplefilter("ignore", UserWarning)
            points = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise InputError(f"{path}: not a CSV of numbers, one keypoint per row ({exc})") from None
    if not points.size:  # no keypoints (the phantom writes such files for tiny 2D images)
        return np.zeros((0, len(shape) if shape is not None else 3), dtype=np.float32)
    if points.size and not np.isfinite(points).all():
        raise InputError(f"{path}: keypoints contain NaN or infinite values")
    if shape is not None and points.size:
        if points.shape[1] != len(shape):
            raise InputError(
                f"{path}: keypoints have {points.shape[1]} columns, the image has {len(shape)} axes"
            )
        outside = (points < -0.5) | (points > np.array(shape) - 0.5)
        if outside.any():
            row = int(np.argmax(outside.any(axis=1)))
            raise InputError(
                f"{path}: keypoint {row + 1} at {points[row].tolist()} lies outside its image "
                f"of shape {shape} (voxel coordinates)"
            )
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
        intensity: the normalisation ([`Intensity`][regzoo.data.learn2reg.Intensity]); given, it replaces
            ``intensity_window``.
        annotations: also load masks, labels and keypoints.
        labels: load the label maps (labelsTr) even without ``annotations`` (training with
            per-label parameters); a fixed image without one is an error.
        cache: keep loaded volumes in memory (off by default, as ``data.cache`` in a config:
            a pass over a split reads every pair once anyway).
    """

    def __init__(
        self,
        root: str | Path,
        split: Split = "train",
        *,
        intensity_window: tuple[float, float] = (-1000.0, 500.0),
        annotations: bool = False,
        labels: bool = False,
        cache: bool = False,
        intensity: Intensity | None = None,
    ) -> None:
        self.root, manifest = read_manifest(root)
        if split not in SPLIT_KEYS:
            raise InputError(f"unknown split '{split}'; expected one of {sorted(SPLIT_KEYS)}")
        self.pairs = [
            (self.root / p["fixed"], self.root / p["moving"])
            for p in manifest.get(SPLIT_KEYS[split], [])
        ]
        if not self.pairs:
            raise InputError(f"{self.root}: the split '{split}' ({SPLIT_KEYS[split]}) has no pairs")
        low, high = intensity_window
        if not high > low:
            raise InputError(f"intensity_window must have high > low, got {intensity_window}")
        self.window = (float(low), float(high))
        self.intensity = intensity or Intensity("window", self.window)
        self.annotations = annotations
        self.labels = labels
        self.cache = cache
        self._cache: dict[Path, dict[str, Any]] = {}  # a plain dict: picklable for workers

    def __len__(self) -> int:
        return len(self.pairs)

    def typical_grid(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """The median voxel spacing (mm) and spatial shape of the split's images, read from
        the NIfTI headers (no voxels are read): the grid a model trained on them expects."""
        import nibabel as nib

        spacings, shapes = [], []
        for path in sorted({p for pair in self.pairs for p in pair}):
            header: Any = nib.load(str(path)).header
            shape = [int(n) for n in header.get_data_shape()]
            while len(shape) > 2 and shape[-1] == 1:
                shape.pop()
            shapes.append(shape)
            spacings.append([float(z) for z in header.get_zooms()[: len(shape)]])
        spacing = tuple(float(v) for v in np.median(np.array(spacings), axis=0))
        shape_out = tuple(int(np.rint(v)) for v in np.median(np.array(shapes), axis=0))
        return spacing, shape_out

    def _load(self, path: Path) -> dict[str, Any]:
        if path in self._cache:
            return self._cache[path]
        item = self._read(path)
        if self.cache:
            self._cache[path] = item
        return item

    def _read(self, path: Path) -> dict[str, Any]:
        volume = read_volume(path)
        item: dict[str, Any] = {
            "image": self.intensity(volume.tensor())[None].contiguous(),
            "spacing": torch.tensor(volume.spacing, dtype=torch.float32),
            "grid": volume.grid,
        }
        wanted = [("mask", "masksTr")] if self.annotations else []
        if self.annotations or self.labels:
            wanted.append(("labels", "labelsTr"))
        for key, folder in wanted:
            sibling = sibling_path(path, folder)
            if sibling is not None and sibling.is_file():
                annotation = read_volume(sibling, what=key)
                check_same_grid(volume.grid, annotation.grid)
                item[key] = torch.from_numpy(np.rint(annotation.data)[None].astype(np.int64))
        if self.annotations:
            keypoints = sibling_path(path, "keypointsTr", suffix=".csv")
            if keypoints is not None and keypoints.is_file():
                item["keypoints"] = torch.from_numpy(load_keypoints(keypoints, volume.shape))
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The items in order (the pairs of the split)."""
        return (self[index] for index in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        fixed_path, moving_path = self.pairs[index]
        fixed, moving = self._load(fixed_path), self._load(moving_path)
        check_same_grid(fixed["grid"], moving["grid"])
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
        if ("keypoints" in fixed) != ("keypoints" in moving):  # TRE would be dropped silently
            lacking = moving_path if "keypoints" in fixed else fixed_path
            csv = sibling_path(lacking, "keypointsTr", suffix=".csv") or lacking
            raise MissingFileError(
                f"keypoints not found: {csv} (the other image of the pair has keypoints; TRE "
                "needs both)"
            )
        if "fixed_keypoints" in item and (
            item["fixed_keypoints"].shape != item["moving_keypoints"].shape
        ):
            raise InputError(
                f"{fixed_path} and {moving_path}: their keypoint files hold "
                f"{item['fixed_keypoints'].shape[0]} and {item['moving_keypoints'].shape[0]} "
                "points; TRE pairs them row by row"
            )
        if self.labels:
            if "labels" not in fixed:
                sibling = sibling_path(fixed_path, "labelsTr") or fixed_path
                raise MissingFileError(
                    f"label map not found: {sibling} (the fixed image's labels, needed by "
                    "per-label parameters)"
                )
            item["fixed_labels"] = fixed["labels"]
        return item
