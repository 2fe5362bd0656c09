"""The LightningDataModule over a Learn2Reg folder (building the phantom when asked)."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from regzoo._errors import MissingFileError
from regzoo.config import DataConfig
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.data.phantom import write_phantom_dataset

__all__ = ["RegistrationDataModule", "ensure_dataset"]


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
        progress=progress,
    )


class RegistrationDataModule(L.LightningDataModule):
    """Training pairs (``training_paired_images``) and validation pairs (``registration_val``).

    Validation items carry masks and keypoints (batch size 1, since keypoint counts differ).
    Pairs stream from disk: each item is read when it is used, by ``data.num_workers`` loader
    processes ahead of the step (``data.cache: true`` keeps decoded volumes in memory instead).
    Under DDP, Lightning wraps the training loader in a ``DistributedSampler``: each rank gets a
    disjoint ``1 / world_size`` share of the shuffled pairs every epoch.
    """

    def __init__(self, config: DataConfig) -> None:
        super().__init__()
        self.config = config

    def prepare_data(self) -> None:
        """Build the phantom if the dataset folder does not exist (runs on one process)."""
        ensure_dataset(self.config)

    def setup(self, stage: str | None = None) -> None:
        """Open the splits."""
        window, cache = self.config.intensity_window, self.config.cache
        self.train_set = Learn2RegDataset(
            self.config.root, "train", intensity_window=window, cache=cache
        )
        self.val_set = Learn2RegDataset(
            self.config.root, "val", intensity_window=window, annotations=True, cache=cache
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training pairs."""
        return DataLoader(
            self.train_set,
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
