"""Lightning callbacks of regzoo's training: TensorBoard images and parameter histograms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["ImageLogger"]


class ImageLogger(L.Callback):
    """Log slices of fixed, moving, warped and the displacement magnitude, and histograms of
    the drawn parameters, every ``every_n_steps`` training steps (rank zero only).

    It reads what :meth:`regzoo.model.HyperRegistration.training_step` returns (``values``,
    ``displacement``, ``warped``); 3D images are shown at their middle slice along the last
    axis, 2D images whole.

    Args:
        every_n_steps: logging interval in optimizer steps.
    """

    def __init__(self, every_n_steps: int = 100) -> None:
        self.every_n_steps = every_n_steps

    @rank_zero_only
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Mapping[str, Any],
        batch_idx: int,
    ) -> None:
        """Log the step's images and parameters when the interval is reached."""
        experiment = getattr(trainer.logger, "experiment", None)
        step = trainer.global_step
        if (
            not isinstance(outputs, Mapping)
            or experiment is None
            or not hasattr(experiment, "add_image")
            or step % self.every_n_steps
        ):
            return
        space = getattr(pl_module, "space", None)  # the model's free ParamSpace
        for i, name in enumerate(space.names if space is not None else []):
            experiment.add_histogram(f"params/{name}", outputs["values"][:, i], step)
        panels = {"fixed": batch["fixed"], "moving": batch["moving"], "warped": outputs["warped"]}
        for title, image in panels.items():
            experiment.add_image(f"images/{title}", _slice(image[0]).clamp(0, 1), step)
        magnitude = _slice(outputs["displacement"][0].norm(dim=0, keepdim=True))
        experiment.add_image(
            "images/displacement_magnitude", magnitude / magnitude.max().clamp_min(1e-6), step
        )


def _slice(image: torch.Tensor) -> torch.Tensor:
    """A ``(C, H, W)`` view of ``(C, *spatial)``: the middle slice of the last axis in 3D."""
    return image[..., image.shape[-1] // 2] if image.ndim == 4 else image
