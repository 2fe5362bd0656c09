"""The LightningDataModule over a Learn2Reg folder (building the phantom when asked)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from regzoo._errors import MissingFileError
from regzoo.config import ConfigError, DataConfig, ExperimentConfig
from regzoo.data.learn2reg import Learn2RegDataset, read_label_names, read_manifest
from regzoo.data.phantom import write_phantom_dataset

__all__ = [
    "RegistrationDataModule",
    "SelfPairs",
    "check_label_names",
    "ensure_dataset",
    "with_label_names",
]


def ensure_dataset(config: DataConfig, *, progress: bool = True) -> None:
    """Build the configured phantom when ``config.root`` is missing.

    Raises:
        FileNotFoundError: if the folder is missing and no phantom is configured.
    """
    if config.root.exists():
        return
    if config.phantom is None:
        raise MissingFileError(
            f"dataset folder not found: {config.root} (and data.phantom is null)"
        )
    phantom = config.phantom
    write_phantom_dataset(
        config.root,
        n=phantom.n,
        val=phantom.val,
        shape=phantom.shape,
        seed=phantom.seed,
        motion=phantom.motion,
        progress=progress,
    )


def with_label_names(config: ExperimentConfig, *, progress: bool = True) -> ExperimentConfig:
    """``config`` with ``data.labels`` filled from the dataset JSON when per-label parameters
    name labels and the config does not map them (the phantom is built first if configured).

    Raises:
        InputError: if the dataset JSON has no usable ``labels`` mapping.
    """
    if not config.label_names() or config.data.labels is not None:
        return config
    ensure_dataset(config.data, progress=progress)
    labels = read_label_names(config.data.root)
    return config.model_copy(update={"data": config.data.model_copy(update={"labels": labels})})


def check_label_names(config: ExperimentConfig) -> None:
    """Check that ``data.labels`` agrees with the dataset JSON's ``labels`` for every label a
    per-label parameter names (when the JSON has such a mapping).

    Raises:
        ConfigError: naming the label and both values.
    """
    names = config.label_names()
    if not names or config.data.labels is None:
        return
    _, manifest = read_manifest(config.data.root)
    if "labels" not in manifest:
        return
    stored = read_label_names(config.data.root)
    for name in names:
        if name in stored and stored[name] != config.data.labels.get(name):
            raise ConfigError(
                f"invalid config: data.labels: '{name}' is {config.data.labels.get(name)} but "
                f"{name} = {stored[name]} in the dataset JSON of {config.data.root}"
            )


class SelfPairs(Dataset[dict[str, Any]]):
    """Training pairs of which a share ``rate`` is an image registered to itself.

    Each item is drawn anew whenever it is read (the global torch generator, seeded with the
    run): with probability ``rate`` its moving image is its fixed image. The objective's
    minimiser for such a pair is the zero field at every parameter setting, so the network
    learns that identical images do not move, instead of adding the data set's average motion
    to whatever it is shown.

    Args:
        pairs: the training pairs (items with ``"fixed"`` and ``"moving"``).
        rate: the share of self pairs, in ``[0, 1]``.
    """

    def __init__(self, pairs: Learn2RegDataset, rate: float) -> None:
        self.pairs, self.rate = pairs, rate

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.pairs[index]
        if self.rate > 0 and float(torch.rand(())) < self.rate:
            item = {**item, "moving": item["fixed"], "moving_id": item["fixed_id"],
                    "moving_path": item["fixed_path"]}  # fmt: skip
        return item


class RegistrationDataModule(L.LightningDataModule):
    """Training pairs (``training_paired_images``) and validation pairs (``registration_val``).

    Validation items carry masks and keypoints (batch size 1, since keypoint counts differ).
    Pairs stream from disk: each item is read when it is used, by ``data.num_workers`` loader
    processes ahead of the step (``data.cache: true`` keeps decoded volumes in memory instead).
    Under DDP, Lightning wraps the training loader in a ``DistributedSampler``: each rank gets a
    disjoint ``1 / world_size`` share of the shuffled pairs every epoch.
    With ``labels`` every item carries the fixed image's label map (per-label parameters).
    With ``data.self_pairs`` a share of the training pairs are images registered to themselves
    (:class:`SelfPairs`).
    """

    def __init__(self, config: DataConfig, *, labels: bool = False) -> None:
        super().__init__()
        self.config = config
        self.labels = labels

    def prepare_data(self) -> None:
        """Build the phantom if the dataset folder does not exist (runs on one process)."""
        ensure_dataset(self.config)

    def setup(self, stage: str | None = None) -> None:
        """Open the splits."""
        window, cache = self.config.intensity_window, self.config.cache
        self.train_set = Learn2RegDataset(
            self.config.root, "train", intensity_window=window, cache=cache, labels=self.labels
        )
        self.val_set = Learn2RegDataset(
            self.config.root,
            "val",
            intensity_window=window,
            annotations=True,
            cache=cache,
            labels=self.labels,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training pairs."""
        pairs = self.train_set
        return DataLoader(
            SelfPairs(pairs, self.config.self_pairs) if self.config.self_pairs else pairs,
            batch_size=self.config.batch_size,
            shuffle=True,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            drop_last=len(self.train_set) >= self.config.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation pairs, one at a time."""
        return DataLoader(
            self.val_set,
            batch_size=1,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )
