"""Lightning callbacks of regzoo's training: TensorBoard images and parameter histograms, and
the guard that stops a diverging run and rolls it back to its last good weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_only

from regzoo._errors import RegzooError

__all__ = ["DivergenceGuard", "ImageLogger", "TrainingDivergedError"]


class TrainingDivergedError(RegzooError, FloatingPointError):
    """Training diverged with finite values; the run was rolled back to its last good weights."""


class DivergenceGuard(L.Callback):
    """Stop a run whose validation collapses and restore the weights of its best validation.

    A loss can stay finite while the network diverges (a learning rate too high for the
    stiffest parameters: the field explodes, Dice collapses, yet nothing is NaN). After every
    validation the guard compares ``val/dice`` (when the validation pairs have masks) and the
    validation objective ``val/objective`` with the best values seen so far. The run has
    diverged when Dice falls more than ``dice_drop`` below its best, or the objective rises by
    more than ``objective_rise`` times its best magnitude, or ``objective_floor`` if that is
    larger (an objective whose best is near 0 would otherwise stop on noise), or is not
    finite. Then the guard loads the weights of the best validation back into the model (the
    weights that were validated: the moving average under ``optimizer.ema_steps``, which is
    reset to them too, so that what is saved and what training's end copies into the model are
    the restored weights, not the diverged average), stops the trainer and keeps a message
    naming both steps in :attr:`diverged`; :func:`regzoo.training.train` saves the restored
    weights as ``last.ckpt`` and raises :class:`TrainingDivergedError` with it.

    The best values, step and weights are part of the checkpoint (:meth:`state_dict`): a
    resumed run compares against them and rolls back to them.

    Under DDP the logged values are synchronised, so every rank takes the same decision.

    Args:
        dice_drop: tolerated fall of the validation Dice below its best (absolute).
        objective_rise: tolerated rise of the validation objective above its best, as a
            fraction of the best's magnitude.
        objective_floor: the smallest magnitude the rise is measured against (absolute, in
            the objective's units).
    """

    def __init__(
        self, dice_drop: float = 0.1, objective_rise: float = 0.5, objective_floor: float = 0.02
    ) -> None:
        self.dice_drop, self.objective_rise = dice_drop, objective_rise
        self.objective_floor = objective_floor
        self.best: dict[str, float] = {}
        self.best_step: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._validated: dict[str, torch.Tensor] | None = None
        self.diverged: str | None = None

    @staticmethod
    def _snapshot(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the starting weights: a run that diverges before its first validation goes
        back to them (never to weights that were not validated)."""
        if self.best_weights is None:
            self.best_weights, self.best_step = self._snapshot(pl_module), trainer.global_step

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the weights being validated (the average, under weight averaging)."""
        if not trainer.sanity_checking and self.diverged is None:
            self._validated = self._snapshot(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Restore the best weights again after a divergence (weight averaging, which runs
        before this guard, copies its average into the model when training ends)."""
        if self.diverged is not None and self.best_weights is not None:
            self._restore(trainer, pl_module, self.best_weights)

    @staticmethod
    def _restore(
        trainer: L.Trainer, pl_module: L.LightningModule, weights: Mapping[str, torch.Tensor]
    ) -> None:
        """Load ``weights`` into the model and into every weight average: a checkpoint saves
        the average as the model's weights, and training's end copies it into the model."""
        pl_module.load_state_dict(weights)
        for callback in getattr(trainer, "callbacks", []):
            average = getattr(callback, "_average_model", None)
            if isinstance(callback, WeightAveraging) and average is not None:
                average.module.load_state_dict(weights)

    def _metric(self, trainer: L.Trainer, name: str) -> float | None:
        value = trainer.callback_metrics.get(name)
        return None if value is None else float(value)

    def _collapse(self, dice_value: float | None, objective: float | None) -> str | None:
        if objective is not None and not math.isfinite(objective):
            return f"the validation objective is {objective}"
        if dice_value is not None and dice_value < self.best.get("dice", 0.0) - self.dice_drop:
            return f"validation Dice fell to {dice_value:.3f} (best {self.best['dice']:.3f})"
        if objective is not None and "objective" in self.best:
            best = self.best["objective"]
            if objective > best + self.objective_rise * max(abs(best), self.objective_floor):
                return f"the validation objective rose to {objective:.4g} (best {best:.4g})"
        return None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the best weights, or roll back to them and stop when validation collapsed."""
        if trainer.sanity_checking or self.diverged is not None:
            return
        dice_value = self._metric(trainer, "val/dice")
        objective = self._metric(trainer, "val/objective")
        step = trainer.global_step
        reason = self._collapse(dice_value, objective)
        if reason is not None:
            if self.best_weights is not None:
                self._restore(trainer, pl_module, self.best_weights)
                restored = f"the weights of step {self.best_step} were restored"
            else:
                restored = "there is no earlier validation to restore"
            self.diverged = (
                f"training diverged at step {step}: {reason}; {restored} and training "
                "stopped (continue with a lower rate: train --resume --set optimizer.lr=..., or "
                "--set trainer.gradient_clip_val=...)"
            )
            trainer.should_stop = True
            return
        # the best weights: highest Dice where there are masks, else lowest objective
        if dice_value is not None:
            improved = dice_value >= self.best.get("dice", -math.inf)
        else:
            improved = objective is not None and objective <= self.best.get("objective", math.inf)
        if objective is not None:
            self.best["objective"] = min(objective, self.best.get("objective", math.inf))
        if improved or not self.best:
            if dice_value is not None:
                self.best["dice"] = max(dice_value, self.best.get("dice", -math.inf))
            self.best_step = step
            self.best_weights = self._validated or self._snapshot(pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The best values, step and weights (a resumed run compares against them and rolls
        back to them)."""
        state: dict[str, Any] = {"best": dict(self.best), "best_step": self.best_step}
        if self.best_weights is not None:
            state["best_weights"] = self.best_weights
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (a checkpoint written before the best weights
        were part of it resumes with its starting weights as the fallback)."""
        self.best = dict(state_dict.get("best", {}))
        self.best_step = state_dict.get("best_step")
        weights = state_dict.get("best_weights")
        if weights is not None:
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


class ImageLogger(L.Callback):
    """Log slices of fixed, moving, warped and the displacement magnitude, and histograms of
    the drawn parameters, every ``every_n_steps`` training steps (rank zero only).

    It reads what :meth:`regzoo.lightning_module.HyperRegistration.training_step` returns (``values``,
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
            or "values" not in outputs  # a skipped step (trainer.nonfinite: skip)
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
