"""The LightningModule: draws parameters per sample, computes the loss, logs, checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from pydantic import ValidationError

from regzoo._errors import InputError, MissingFileError, PluginError, RegzooError
from regzoo.config import ExperimentConfig
from regzoo.metrics import dice
from regzoo.nets import RegistrationNet, RegistrationOutput
from regzoo.objective import LossTerms
from regzoo.resolve import build_objective
from regzoo.spatial import Spacing, warp, warp_labels

__all__ = ["HyperRegistration", "NonFiniteLossError", "load_model", "plugin_reference"]


class NonFiniteLossError(RegzooError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient (no such weights are saved)."""


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
        self.space = self.objective.space
        model = config.model
        self.net = RegistrationNet(
            model.ndim,
            enc=model.enc,
            dec=model.dec,
            num_params=len(self.space) if model.hyper else 0,
            hyper_units=model.hyper_units,
            int_steps=model.int_steps,
            int_downsize=model.int_downsize,
            hyper_init_share=model.hyper_init_share,
        )
        self._generator = torch.Generator().manual_seed(config.seed)

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the images the model registers (2 or 3)."""
        return self.config.model.ndim

    def energy_spacing(self, spacing: Spacing) -> torch.Tensor | None:
        """The spacing the regularizers use: the images' spacing in mm, or ``None`` (voxels).

        With ``energy_units: mm`` (the default) energies are per millimetre, so anisotropic
        data is regularised by its physical geometry; ``voxel`` ignores the spacing.
        ``spacing`` is ``(D,)`` or one row per sample ``(B, D)`` (all rows must agree).

        Raises:
            InputError: for a batch that mixes voxel spacings.
        """
        if spacing is None or self.config.energy_units == "voxel":
            return None
        values = torch.as_tensor(spacing, dtype=torch.float32, device=self.device)
        if values.ndim == 2:
            if not bool(torch.allclose(values, values[:1])):
                raise InputError(
                    f"a batch mixes voxel spacings {values.tolist()}: use data.batch_size 1 "
                    "or energy_units: voxel"
                )
            values = values[0]
        return values

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
                raise InputError(
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
        return self.net(fixed, moving, unit)

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
            fixed, moving, self.space.normalize(values) if self.net.num_params else None
        )
        warped = warp(moving, output.displacement)
        field = output.velocity if self.config.regularize == "velocity" else output.displacement
        spacing = self.energy_spacing(batch.get("spacing"))
        labels = batch.get("fixed_labels") if self.objective.needs_labels else None
        terms = self.objective(fixed, warped, field, values, spacing, labels)
        return terms, output, warped

    def _log_terms(self, stage: str, terms: LossTerms, batch_size: int) -> torch.Tensor:
        loss = terms.training_loss.mean()
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

        A non-finite loss stops training with :class:`NonFiniteLossError` naming the step and
        the drawn parameters (``trainer.nonfinite: skip`` skips the step instead).

        Returns:
            ``{"loss", "values", "displacement", "warped"}`` (the extras detached, for the
            image-logging callback), or ``None`` for a skipped step.
        """
        values = self._draw_parameters(batch["fixed"].shape[0])
        terms, output, warped = self._loss(batch, values)
        loss = self._log_terms("train", terms, values.shape[0])
        if not bool(torch.isfinite(loss)):
            if self.config.trainer.nonfinite == "skip":
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
        entry makes its tensor's norm non-finite) and one host-device sync per step; the
        offending tensor is looked up only when there is one.
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            return
        bad = [
            name
            for name, p in self.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ] or ["(a gradient norm overflowed)"]
        if self.config.trainer.nonfinite == "skip":
            optimizer.zero_grad(set_to_none=True)
            return
        raise NonFiniteLossError(
            f"non-finite gradients at step {self.global_step} (first: {bad[0]}); lower "
            f"optimizer.lr (now {self.config.optimizer.lr:g}) or set trainer.gradient_clip_val"
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
        """Adam (or AdamW) with the configured learning rate, fused where torch supports it
        (not with gradient clipping under mixed precision, which Lightning refuses).

        The fused kernel updates all parameters in one pass: the hypernetwork's heads hold
        ~10M parameters, whose update costs 70 ms per step unfused on one CPU core, 8 ms fused.
        """
        opt = self.config.optimizer
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        trainer = self.config.trainer
        if trainer.gradient_clip_val and "mixed" in str(trainer.precision):
            # Lightning cannot clip the gradients of a fused optimizer under mixed precision
            return cls(self.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        try:
            return cls(self.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, fused=True)
        except (RuntimeError, TypeError):  # a device or torch without the fused kernel
            return cls(self.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the config, the plugins (file paths made absolute), the free space and the
        parameter sampler's state, so that :func:`load_model` can rebuild the model from
        another folder and check it, and ``train --resume`` continues the same draws."""
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config.model_dump(mode="json"),
            "plugins": [plugin_reference(p) for p in self.config.plugins],
            "free_parameters": self.space.names,
            "sampler_states": self._sampler_states(),
        }

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
        """Restore this rank's parameter sampler state when training resumes.

        A checkpoint written by as many processes holds each rank's own state. Resumed on
        another number of processes, rank ``r`` is seeded from ``(seed, r, step)`` instead:
        every rank still draws its own parameters, never rank zero's.
        """
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


def plugin_reference(spec: str) -> str:
    """A plugin as stored in checkpoints: ``.py`` files as absolute paths, modules as named."""
    return str(Path(spec).resolve()) if spec.endswith(".py") else spec


def _read_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(
            f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get(CHECKPOINT_KEY), dict):
        raise InputError(f"{path}: not a regzoo checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return state


def load_model(
    checkpoint: str | Path,
    *,
    plugins: Sequence[str] = (),
    map_location: str | torch.device = "cpu",
) -> HyperRegistration:
    """Rebuild a trained model from a checkpoint, in eval mode.

    The file is read with ``torch.load(weights_only=True)``: no pickled code runs. Nor does any
    plugin the checkpoint names: installed plugins (entry points) are available as always, but a
    plugin module or ``.py`` file stored in the checkpoint is imported only when the caller
    names it again in ``plugins`` (CLI: ``--plugin``); otherwise the error names it.

    Args:
        checkpoint: a ``.ckpt`` written by ``regzoo train``.
        plugins: plugin modules or ``.py`` files the caller trusts and wants imported.
        map_location: device for the weights.

    Raises:
        MissingFileError: if the checkpoint does not exist.
        InputError: if the file is not a regzoo checkpoint, its weights do not match its config
            or its free parameters, or they hold NaN or infinite values.
        PluginError: if the model needs a plugin stored in the checkpoint that the caller did
            not name.
    """
    path = Path(checkpoint)
    state = _read_checkpoint(path, map_location)
    extras = state[CHECKPOINT_KEY]
    stored = [str(p) for p in extras.get("plugins", [])]
    trusted = [plugin_reference(p) for p in plugins]
    config_data = {**dict(extras.get("config", {})), "plugins": trusted}
    try:
        config = ExperimentConfig.model_validate(config_data)
        model = HyperRegistration(config)
    except (ValidationError, RegzooError) as exc:
        untrusted = [p for p in stored if p not in trusted]
        if untrusted:
            raise PluginError(
                f"{path}: the model needs the plugin(s) {', '.join(untrusted)} named in the "
                "checkpoint; regzoo never imports code a checkpoint names: if you trust it, "
                f"pass --plugin {untrusted[0]} (Python: load_model(..., plugins=[...]))"
            ) from None
        raise InputError(f"{path}: its stored config is invalid: {exc}") from None
    if extras.get("free_parameters") not in (None, model.space.names):
        raise InputError(
            f"{path}: its weights were trained for the free parameters "
            f"{extras['free_parameters']}, but its config gives {model.space.names}"
        )
    weights = state.get("state_dict", {})
    bad = [
        k for k, v in weights.items() if torch.is_tensor(v) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise InputError(
            f"{path}: {len(bad)} weight tensors hold NaN or infinite values (first: {bad[0]}); "
            "the training diverged"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: its weights do not match its config ({first})") from None
    return model.to(map_location).eval()
