"""The LightningModule: draws parameters per sample, computes the loss, logs, checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from regzoo.config import ExperimentConfig
from regzoo.metrics import dice
from regzoo.nets import RegistrationNet, RegistrationOutput
from regzoo.objective import LossTerms, build_objective
from regzoo.spatial import warp, warp_labels

__all__ = ["HyperRegistration", "load_model"]

CHECKPOINT_KEY = "regzoo"


class HyperRegistration(L.LightningModule):
    """A registration network conditioned on the free parameters of its objective.

    Training draws one parameter vector per sample from the free space (uniform on each
    parameter's scale, ends oversampled at ``sampling.endpoint_rate``), predicts the field with
    the network conditioned on the normalised vector, and minimises
    ``sim(F, M o phi) + alpha * R(field; params)`` with each sample's OWN parameters.

    Args:
        config: a validated experiment config, or its ``model_dump(mode="json")`` dict (as stored
            in checkpoints).
    """

    def __init__(self, config: ExperimentConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, ExperimentConfig):
            config = ExperimentConfig.model_validate(dict(config))
        self.config = config
        self.save_hyperparameters({"config": config.model_dump(mode="json")})
        self.objective = build_objective(config)
        self.space = self.objective.free_space
        model = config.model
        self.net = RegistrationNet(
            3,
            enc=model.enc,
            dec=model.dec,
            num_params=len(self.space) if model.hyper else 0,
            hyper_units=model.hyper_units,
            int_steps=model.int_steps,
            int_downsize=model.int_downsize,
            hyper_init_share=model.hyper_init_share,
        )
        self._generator = torch.Generator().manual_seed(config.seed)

    # -- inference --------------------------------------------------------------------
    def parameter_tensor(
        self, params: Mapping[str, float] | torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """Physical free-parameter values ``(batch, P)`` from a mapping (defaults filled)."""
        if isinstance(params, torch.Tensor):
            values = params.to(self.device, torch.float32)
            if values.ndim == 1:
                values = values.unsqueeze(0)
            if values.shape[-1] != len(self.space):
                raise ValueError(
                    f"expected parameters (B, {len(self.space)}) for {self.space.names}, "
                    f"got {tuple(values.shape)}"
                )
            return values.expand(batch, -1) if values.shape[0] == 1 else values
        return self.objective.to_tensor(params, batch=batch).to(self.device)

    def forward(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        params: Mapping[str, float] | torch.Tensor | None = None,
    ) -> RegistrationOutput:
        """Predict the field for images ``(B, 1, *spatial)`` at physical ``params``.

        ``params`` is a mapping (short or full names; defaults fill the rest) or a tensor
        ``(B, P)`` / ``(P,)`` of physical values in the order of ``self.space``. Plain
        (non-hyper) models ignore it.
        """
        values = self.parameter_tensor(params, fixed.shape[0])
        unit = self.space.normalize(values) if self.net.num_params else None
        return self.net(moving, fixed, unit)

    # -- training ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Seed the parameter sampler with ``seed + global_rank``; compile the net if asked.

        Under DDP every process draws its own parameter vectors (one process: ``seed``).
        ``model.compile`` compiles the network for training only (``torch.compile``).
        """
        self._generator.manual_seed(self.config.seed + self.global_rank)
        if stage == "fit" and self.config.model.compile:
            self.net.compile()  # in place: the state dict keeps its keys

    def _draw_parameters(self, batch: int) -> torch.Tensor:
        if len(self.space) == 0:
            return torch.zeros(batch, 0, device=self.device)
        values = self.space.sample(
            batch, self._generator, endpoint_rate=self.config.sampling.endpoint_rate
        )
        return values.to(self.device)

    def _loss(self, batch: Mapping[str, Any], values: torch.Tensor) -> tuple[LossTerms, Any, Any]:
        fixed, moving = batch["fixed"], batch["moving"]
        output = self.net(
            moving, fixed, self.space.normalize(values) if self.net.num_params else None
        )
        warped = warp(moving, output.displacement)
        field = output.velocity if self.config.regularize == "velocity" else output.displacement
        terms = self.objective(fixed, warped, field, values)
        return terms, output, warped

    def _log_terms(self, stage: str, terms: LossTerms, batch_size: int) -> torch.Tensor:
        loss = terms.training.mean()
        logged = {
            f"{stage}/loss": loss,
            f"{stage}/objective": terms.total.mean(),
            f"{stage}/similarity": terms.similarity.mean(),
        }
        logged.update({f"{stage}/energy/{k}": v.mean() for k, v in terms.energies.items()})
        self.log_dict(logged, batch_size=batch_size, prog_bar=False, sync_dist=stage != "train")
        self.log(
            f"{stage}_loss",
            loss,
            batch_size=batch_size,
            prog_bar=True,
            logger=False,
            sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        """One step: draw per-sample parameters, register, compute the per-sample loss."""
        values = self._draw_parameters(batch["fixed"].shape[0])
        terms, output, warped = self._loss(batch, values)
        loss = self._log_terms("train", terms, values.shape[0])
        self._log_tensorboard(batch, values, output, warped)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Loss and lung Dice at the default parameters."""
        values = self.parameter_tensor(None, batch["fixed"].shape[0])
        terms, output, _ = self._loss(batch, values)
        self._log_terms("val", terms, values.shape[0])
        if "moving_mask" in batch:
            warped_mask = warp_labels(batch["moving_mask"], output.displacement)
            scores = dice(warped_mask[0, 0], batch["fixed_mask"][0, 0])
            if scores:
                mean_dice = torch.tensor(sum(scores.values()) / len(scores), device=self.device)
                self.log("val/dice", mean_dice, batch_size=1, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam (or AdamW) with the configured learning rate, fused where torch supports it.

        The fused kernel updates all parameters in one pass: the hypernetwork's heads hold
        ~10M parameters, whose update costs 70 ms per step unfused on one CPU core, 8 ms fused.
        """
        opt = self.config.optimizer
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        try:
            return cls(self.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, fused=True)
        except (RuntimeError, TypeError):  # a device or torch without the fused kernel
            return cls(self.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)

    def _log_tensorboard(
        self,
        batch: Mapping[str, Any],
        values: torch.Tensor,
        output: RegistrationOutput,
        warped: torch.Tensor,
    ) -> None:
        every = self.config.logging.image_every_n_steps
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image") or self.global_step % every:
            return
        for i, name in enumerate(self.space.names):
            experiment.add_histogram(f"params/{name}", values[:, i], self.global_step)
        mid = batch["fixed"].shape[-1] // 2
        panels = [batch["fixed"], batch["moving"], warped]
        for title, image in zip(("fixed", "moving", "warped"), panels, strict=True):
            experiment.add_image(
                f"images/{title}", image[0, :, ..., mid].clamp(0, 1), self.global_step
            )
        magnitude = output.displacement[0].norm(dim=0)[..., mid]
        experiment.add_image(
            "images/displacement_magnitude",
            (magnitude / magnitude.max().clamp_min(1e-6)).unsqueeze(0),
            self.global_step,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the config and plugin names so :func:`load_model` can rebuild the model."""
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config.model_dump(mode="json"),
            "plugins": list(self.config.plugins),
            "free_parameters": self.space.names,
        }


def load_model(
    checkpoint: str | Path, *, map_location: str | torch.device = "cpu"
) -> HyperRegistration:
    """Rebuild a trained model from a checkpoint alone, in eval mode.

    The file is read with ``torch.load(weights_only=True)``: no pickled code runs. The plugins
    the model was trained with are imported again (they must be installed or present).

    Raises:
        FileNotFoundError: if the checkpoint does not exist.
        ValueError: if the file is not a regzoo checkpoint.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or CHECKPOINT_KEY not in state:
        raise ValueError(f"{path}: not a regzoo checkpoint (no '{CHECKPOINT_KEY}' entry)")
    model = HyperRegistration(state[CHECKPOINT_KEY]["config"])
    model.load_state_dict(state["state_dict"])
    return model.to(map_location).eval()
