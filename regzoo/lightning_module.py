"""How a model is TRAINED: the LightningModule that wraps a
[`RegistrationModel`][regzoo.registration_model.RegistrationModel] (parameter sampling, curriculum,
loss, validation, optimisers, checkpoint state hooks).

Checkpoints store the wrapped model's weights under its own names (``net.*``): the hooks
remove the wrapper's ``model.`` prefix on save and restore it on load, so checkpoints written
before the split and after it load alike
([`regzoo.checkpoint.load_model`][regzoo.checkpoint.load_model], resume).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from regzoo._errors import RegzooError
from regzoo.checkpoint import (
    CHECKPOINT_KEY,
    config_digest,
    model_weights,
    plugin_origins,
    plugin_reference,
)
from regzoo.config import ExperimentConfig
from regzoo.metrics import dice, target_registration_error
from regzoo.nets import RegistrationNet, RegistrationOutput
from regzoo.objective import LossTerms, Objective
from regzoo.optimizers import configure_optimizers
from regzoo.params import ParamSpace
from regzoo.refinement import RefineOptions, refine_field
from regzoo.registration_model import RegistrationModel
from regzoo.spatial import Spacing, warp, warp_labels

__all__ = [
    "MAX_CONSECUTIVE_SKIPS",
    "HyperRegistration",
    "NonFiniteLossError",
]

_PREFIX = "model."


class NonFiniteLossError(RegzooError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient (no such weights are saved)."""


class HyperRegistration(L.LightningModule):
    """Trains a [`RegistrationModel`][regzoo.registration_model.RegistrationModel] (held as
    ``model``).

    Training draws one parameter vector per sample from the free space (uniform on each
    parameter's scale, ends oversampled at ``sampling.endpoint_rate``; with
    ``sampling.curriculum_steps`` the range widens from the defaults to the whole range over
    that many steps, so the network first learns to register, then how the parameters change
    the field), predicts the field with
    the network conditioned on the normalised vector, and minimises
    ``sim(F, M o phi) + alpha * R(field; params)`` with each sample's OWN parameters.

    The model's attributes (``config``, ``objective``, ``space``, ``net``) and inference methods
    are available here too, so a training module registers like the model it wraps.

    Args:
        config: a validated experiment config, or its ``model_dump(mode="json")`` dict (as stored
            in checkpoints).
    """

    def __init__(self, config: ExperimentConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.model = RegistrationModel(config)
        self.save_hyperparameters({"config": self.model.config.model_dump(mode="json")})
        self._generator = torch.Generator().manual_seed(self.model.config.seed)

    @property
    def config(self) -> ExperimentConfig:
        """The experiment config."""
        return self.model.config

    @property
    def objective(self) -> Objective:
        """The similarity and regularizer terms."""
        return self.model.objective

    @property
    def space(self) -> ParamSpace:
        """The free parameters."""
        return self.model.space

    @property
    def net(self) -> RegistrationNet:
        """The registration network."""
        return self.model.net

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the images the model registers (2 or 3)."""
        return self.model.ndim

    def energy_spacing(self, spacing: Spacing) -> torch.Tensor | None:
        """See
        [`RegistrationModel.energy_spacing`][regzoo.registration_model.RegistrationModel.energy_spacing]."""
        return self.model.energy_spacing(spacing)

    def parameter_tensor(
        self, params: Mapping[str, float] | torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """See
        [`RegistrationModel.parameter_tensor`][regzoo.registration_model.RegistrationModel.parameter_tensor]."""
        return self.model.parameter_tensor(params, batch)

    def regularized_field(self, output: RegistrationOutput) -> torch.Tensor:
        """See
        [`RegistrationModel.regularized_field`][regzoo.registration_model.RegistrationModel.regularized_field]."""
        return self.model.regularized_field(output)

    def forward(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        params: Mapping[str, float] | torch.Tensor | None = None,
        *,
        spacing: Spacing = None,
        at_training_spacing: bool | None = None,
    ) -> RegistrationOutput:
        """The wrapped model's prediction ([`RegistrationModel.forward`][regzoo.registration_model.RegistrationModel.forward])."""
        return self.model(
            fixed, moving, params, spacing=spacing, at_training_spacing=at_training_spacing
        )

    # -- training ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Seed the parameter sampler with ``seed + global_rank``; compile the net if asked.

        Under DDP every process draws its own parameter vectors (one process: ``seed``).
        ``model.compile`` compiles the network for training only (``torch.compile``).
        """
        self._generator.manual_seed(self.config.seed + self.global_rank)
        if stage == "fit" and self.config.model.compile:
            self.model.net.compile()  # in place: the state dict keeps its keys

    def curriculum_width(self, step: int) -> float:
        """Share of the range sampled at ``step``: grows linearly from 0 to 1 over
        ``sampling.curriculum_steps`` (1 from the start without a curriculum)."""
        steps = self.config.sampling.curriculum_steps
        return 1.0 if steps == 0 else min(1.0, step / steps)

    def _draw_parameters(self, batch: int, step: int | None = None) -> torch.Tensor:
        if len(self.space) == 0:
            return torch.zeros(batch, 0, device=self.device)
        values = self.space.sample(
            batch, self._generator, endpoint_rate=self.config.sampling.endpoint_rate
        )
        width = self.curriculum_width(self.global_step if step is None else step)
        if width < 1.0:  # shrink the draws towards the defaults, on the normalised scale
            centre = self.space.normalize(self.parameter_tensor(None, 1).cpu())
            offset = self.space.normalize(values) - centre
            periodic = torch.tensor([s.scale == "periodic" for s in self.space.specs])
            # a periodic parameter moves the short way round its circle
            offset = torch.where(periodic, torch.remainder(offset + 0.5, 1.0) - 0.5, offset)
            values = self.space.denormalize(centre + width * offset)
        return values.to(self.device)

    def _loss(self, batch: Mapping[str, Any], values: torch.Tensor) -> tuple[LossTerms, Any, Any]:
        fixed, moving = batch["fixed"], batch["moving"]
        output = self.model.predict(fixed, moving, values)
        warped = warp(moving, output.displacement)
        field = self.regularized_field(output)
        spacing = self.energy_spacing(batch.get("spacing"))
        labels = batch.get("fixed_labels") if self.objective.needs_labels else None
        terms = self.objective(fixed, warped, field, values, spacing, labels)
        return terms, output, warped

    def _lookahead(
        self, batch: Mapping[str, Any], values: torch.Tensor, output: RegistrationOutput
    ) -> torch.Tensor:
        """Mean squared distance ``(B,)`` from the predicted field to the field that
        ``lookahead.steps`` refinement iterations reach from it (see ``LookaheadConfig``)."""
        ahead = self.config.lookahead
        diffeomorphic = self.config.model.int_steps > 0 and output.velocity is not None
        field = output.velocity if diffeomorphic else output.displacement
        assert field is not None
        options = RefineOptions(
            steps=ahead.steps,
            lr=ahead.lr,
            grid_downsize=ahead.grid_downsize,
            levels=ahead.levels,
            int_steps=self.config.model.int_steps,
            regularize=self.config.regularize,
        )
        labels = batch.get("fixed_labels") if self.objective.needs_labels else None
        with torch.enable_grad():
            target = refine_field(
                self.objective,
                batch["fixed"],
                batch["moving"],
                field.detach(),
                values,
                options,
                spacing=self.energy_spacing(batch.get("spacing")),
                labels=labels,
            )
        goal = target.velocity if diffeomorphic else target.displacement
        assert goal is not None
        return (field - goal.detach()).pow(2).flatten(1).mean(1) * ahead.weight

    def _log_terms(
        self, stage: str, terms: LossTerms, batch_size: int, lookahead: torch.Tensor | None = None
    ) -> torch.Tensor:
        loss = terms.training_loss.mean()
        if lookahead is not None:
            loss = loss + lookahead.mean()
            self.log(f"{stage}/lookahead", lookahead.mean(), batch_size=batch_size)
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

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Any] | None:
        """One step: draw per-sample parameters, register, compute the per-sample loss.

        A non-finite loss stops training with
        [`NonFiniteLossError`][regzoo.lightning_module.NonFiniteLossError] naming the step and the
        drawn parameters (``trainer.nonfinite: skip`` skips the step instead).

        Returns:
            ``{"loss", "values", "displacement", "warped"}`` (the extras detached, for the
            image-logging callback), or ``None`` for a skipped step.
        """
        values = self._draw_parameters(batch["fixed"].shape[0])
        terms, output, warped = self._loss(batch, values)
        ahead = self._lookahead(batch, values, output) if self.config.lookahead.steps else None
        loss = self._log_terms("train", terms, values.shape[0], ahead)
        if not bool(torch.isfinite(loss)):
            if self.config.trainer.nonfinite == "skip" and self._skip("loss"):
                return None
            raise NonFiniteLossError(
                f"the training loss is {loss.item()} at step {self.global_step} with the drawn "
                f"parameters {self._describe(values)}; lower optimizer.lr (now "
                f"{self.config.optimizer.lr:g}) or set trainer.gradient_clip_val"
            )
        return {
            "loss": loss,
            "values": values.detach(),
            "displacement": output.displacement.detach(),
            "warped": warped.detach(),
        }

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Never let a non-finite gradient into the weights (error, or skip by config).

        One fused reduction over every gradient (``torch._foreach_norm``: a NaN or infinite
        entry makes its tensor's norm non-finite) read back with one host-device sync (the
        check of the loss in [`training_step`][regzoo.lightning_module.HyperRegistration.training_step] is a second one per step, and Lightning's
        logging may add its own); the offending tensor is looked up only when there is one.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            self._skipped = 0
            return
        bad = [
            name
            for name, p in self.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ] or ["(a gradient norm overflowed)"]
        if self.config.trainer.nonfinite == "skip" and self._skip(f"gradient ({bad[0]})"):
            optimizer.zero_grad(set_to_none=True)
            return
        raise NonFiniteLossError(
            f"non-finite gradients at step {self.global_step} (first: {bad[0]}); lower "
            f"optimizer.lr (now {self.config.optimizer.lr:g}) or set trainer.gradient_clip_val"
        )

    def _skip(self, what: str) -> bool:
        """Count a skipped step; past
        [`MAX_CONSECUTIVE_SKIPS`][regzoo.lightning_module.MAX_CONSECUTIVE_SKIPS] in a row, or more
        than that many making over a quarter of all steps, training stops (the weights no longer
        produce finite values: skipping on would end with useless ones)."""
        self._skipped = getattr(self, "_skipped", 0) + 1
        self._skipped_total = getattr(self, "_skipped_total", 0) + 1
        steps = self._skipped_total + self.global_step
        if self._skipped <= MAX_CONSECUTIVE_SKIPS and not (
            self._skipped_total > MAX_CONSECUTIVE_SKIPS and self._skipped_total > steps / 4
        ):
            return True
        raise NonFiniteLossError(
            f"{self._skipped} consecutive and {self._skipped_total} steps in all skipped for a "
            f"non-finite {what} at step "
            f"{self.global_step} (trainer.nonfinite: skip allows {MAX_CONSECUTIVE_SKIPS}): the "
            f"training diverged; lower optimizer.lr (now {self.config.optimizer.lr:g}) or set "
            "trainer.gradient_clip_val"
        )

    def _describe(self, values: torch.Tensor) -> str:
        rows = values.detach().cpu().tolist()
        return (
            "; ".join(
                ", ".join(f"{n}={v:.4g}" for n, v in zip(self.space.names, row, strict=True))
                for row in rows
            )
            or "(none)"
        )

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Loss, lung Dice and landmark TRE (mm) at the default parameters.

        ``val/dice`` and ``val/tre_mm`` are logged when the validation pairs carry masks and
        keypoints; they are the learning curves of ``benchmarks/network.py`` and what
        [`DivergenceGuard`][regzoo.callbacks.DivergenceGuard] watches.
        """
        values = self.parameter_tensor(None, batch["fixed"].shape[0])
        terms, output, _ = self._loss(batch, values)
        self._log_terms("val", terms, values.shape[0])
        if "moving_mask" in batch:
            warped_mask = warp_labels(batch["moving_mask"], output.displacement)
            scores = dice(warped_mask[0, 0], batch["fixed_mask"][0, 0])
            if scores:
                mean_dice = torch.tensor(sum(scores.values()) / len(scores), device=self.device)
                self.log("val/dice", mean_dice, batch_size=1, prog_bar=True, sync_dist=True)
        if "fixed_keypoints" in batch and "spacing" in batch:
            errors = target_registration_error(
                batch["fixed_keypoints"][0],
                batch["moving_keypoints"][0],
                output.displacement[0].detach(),
                batch["spacing"][0].cpu(),
            )
            tre = errors.mean().to(self.device)
            self.log("val/tre_mm", tre, batch_size=1, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """The optimiser and schedule of
        [`regzoo.optimizers.configure_optimizers`][regzoo.optimizers.configure_optimizers]."""
        return configure_optimizers(self.config, self.named_parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the weights as the model names them (``net.*``), the config, the plugins (file
        paths made absolute) and the distributions that provide them, the free space, the
        training grid (median spacing and shape of the training images,
        [`TrainingGrid`][regzoo.registration_model.TrainingGrid]) and the parameter sampler's
        state, so that [`load_model`][regzoo.checkpoint.load_model] can rebuild the model from
        another folder and
        check it, and ``train --resume`` continues the same draws."""
        for key in ("state_dict", "current_model_state"):  # the latter: weight averaging's
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint[key] = model_weights(checkpoint[key])
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config.model_dump(mode="json"),
            "plugins": [plugin_reference(p) for p in self.config.plugins],
            "plugin_origins": plugin_origins(self.config),  # the packages to install
            "free_parameters": self.space.names,
            "sampler_states": self._sampler_states(),
            "config_digest": config_digest(self.config),
        }
        if self.model.training_grid is not None:  # the grid the network runs at (test time)
            checkpoint[CHECKPOINT_KEY]["training_grid"] = self.model.training_grid.as_dict()

    def _sampler_states(self) -> torch.Tensor:
        """Every rank's sampler state ``(world_size, N)``: under DDP each process draws its own
        stream, and the checkpoint (written by rank zero) must hold all of them. Every rank
        runs this hook when Lightning saves, so the gather is collective."""
        state = self._generator.get_state()
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return state[None]
        gathered = self.all_gather(state.to(self.device))
        assert isinstance(gathered, torch.Tensor)
        return gathered.reshape(trainer.world_size, -1).cpu()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the stored weights as this module does (``model.net.*``; Lightning loads them
        after this hook), and restore this rank's parameter sampler state when training resumes.

        A checkpoint written by as many processes holds each rank's own state. Resumed on
        another number of processes, rank ``r`` is seeded from ``(seed, r, step)`` instead:
        every rank still draws its own parameters, never rank zero's.
        """
        from regzoo.resuming import continue_with_lr

        continue_with_lr(checkpoint, self.config.optimizer.lr, CHECKPOINT_KEY)  # --set lr=
        for key in ("state_dict", "current_model_state"):  # stored as the model names them
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint[key] = {
                    (k if k.startswith(_PREFIX) else _PREFIX + k): v
                    for k, v in checkpoint[key].items()
                }
        extras = checkpoint.get(CHECKPOINT_KEY, {})
        states = extras.get("sampler_states")
        if states is None and extras.get("sampler_state") is not None:
            states = extras["sampler_state"][None]  # a checkpoint of one process
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        rank = self.global_rank
        if states is not None and len(states) == world:
            self._generator.set_state(states[rank].to("cpu", torch.uint8).clone())
        else:
            step = int(checkpoint.get("global_step", 0))
            self._generator.manual_seed(hash((self.config.seed, rank, step)) & (2**63 - 1))


MAX_CONSECUTIVE_SKIPS = 20
"""Steps in a row that ``trainer.nonfinite: skip`` may skip before training stops."""
