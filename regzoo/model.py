"""The LightningModule: draws parameters per sample, computes the loss, logs, checkpoints."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from pydantic import ValidationError

from regzoo._errors import InputError, MissingFileError, PluginError, RegzooError
from regzoo.config import ExperimentConfig
from regzoo.metrics import dice, target_registration_error
from regzoo.nets import RegistrationNet, RegistrationOutput
from regzoo.nets.unet import drop_flow_shift
from regzoo.objective import LossTerms
from regzoo.registry import load_plugins
from regzoo.resolve import build_objective
from regzoo.spatial import Spacing, warp, warp_labels

__all__ = [
    "HyperRegistration",
    "NonFiniteLossError",
    "build_network",
    "check_finite_field",
    "learning_rate_factor",
    "load_model",
    "plugin_reference",
]


class NonFiniteLossError(RegzooError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient (no such weights are saved)."""


CHECKPOINT_KEY = "regzoo"


class HyperRegistration(L.LightningModule):
    """A registration network conditioned on the free parameters of its objective.

    Training draws one parameter vector per sample from the free space (uniform on each
    parameter's scale, ends oversampled at ``sampling.endpoint_rate``; with
    ``sampling.curriculum_steps`` the range widens from the defaults to the whole range over
    that many steps, so the network first learns to register, then how the parameters change
    the field), predicts the field with
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
        self.net = build_network(config, len(self.space))
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
            unit = centre + width * (self.space.normalize(values) - centre)
            values = self.space.denormalize(unit)
        return values.to(self.device)

    def regularized_field(self, output: RegistrationOutput) -> torch.Tensor:
        """The field the objective's energies see: the stationary velocity with
        ``regularize: velocity`` (when the output has one), else the displacement."""
        if self.config.regularize == "velocity" and output.velocity is not None:
            return output.velocity
        return output.displacement

    def _loss(self, batch: Mapping[str, Any], values: torch.Tensor) -> tuple[LossTerms, Any, Any]:
        fixed, moving = batch["fixed"], batch["moving"]
        output = self.net(
            fixed, moving, self.space.normalize(values) if self.net.num_params else None
        )
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
        from regzoo.refine import RefineOptions, refine_field

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

        A non-finite loss stops training with :class:`NonFiniteLossError` naming the step and
        the drawn parameters (``trainer.nonfinite: skip`` skips the step instead).

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
        entry makes its tensor's norm non-finite) and one host-device sync per step; the
        offending tensor is looked up only when there is one.
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
        """Count a skipped step; past :data:`MAX_CONSECUTIVE_SKIPS` in a row, or more than that
        many making over a quarter of all steps, training stops (the weights no longer produce
        finite values: skipping on would end with useless ones)."""
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
        :class:`~regzoo.callbacks.DivergenceGuard` watches.
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

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """The backbone's parameters, and the conditioning path's at its own learning rate.

        The conditioning path is the hypernetwork's MLP, the FiLM layers and, for generated
        weights, the heads' weight matrices (their biases hold the parameter-independent
        kernels: the backbone)."""
        conditioning: list[torch.nn.Parameter] = []
        backbone: list[torch.nn.Parameter] = []
        for name, parameter in self.named_parameters():
            is_conditioning = (
                name.startswith("net.hypernet.") or "film." in name or name.endswith("_head.weight")
            )
            (conditioning if is_conditioning else backbone).append(parameter)
        scale = self.config.optimizer.conditioning_lr_scale
        groups: list[dict[str, Any]] = [{"params": backbone}] if backbone else []
        if conditioning:
            groups.append({"params": conditioning, "lr": self.config.optimizer.lr * scale})
        return groups

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """Adam (or AdamW) with the configured learning rate and schedule, fused where torch
        supports it (not with gradient clipping under mixed precision, which Lightning refuses).

        The fused kernel updates all parameters in one pass: the hypernetwork's heads hold
        ~10M parameters, whose update costs 70 ms per step unfused on one CPU core, 8 ms fused.
        The schedule (:func:`learning_rate_factor`) is applied every optimizer step.
        """
        opt = self.config.optimizer
        cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        trainer = self.config.trainer
        kwargs: dict[str, Any] = {"lr": opt.lr, "weight_decay": opt.weight_decay}
        groups = self._parameter_groups()
        optimizer = None
        if not (trainer.gradient_clip_val and "mixed" in str(trainer.precision)):
            # Lightning cannot clip the gradients of a fused optimizer under mixed precision
            try:
                optimizer = cls(groups, fused=True, **kwargs)
            except (RuntimeError, TypeError):  # a device or torch without the fused kernel
                optimizer = None
        if optimizer is None:
            optimizer = cls(groups, **kwargs)
        total = trainer.max_steps

        def factor(step: int) -> float:
            return learning_rate_factor(step, opt.schedule, opt.warmup_steps, total)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the config, the plugins (file paths made absolute), the free space and the
        parameter sampler's state, so that :func:`load_model` can rebuild the model from
        another folder and check it, and ``train --resume`` continues the same draws."""
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config.model_dump(mode="json"),
            "plugins": [plugin_reference(p) for p in self.config.plugins],
            "free_parameters": self.space.names,
            "sampler_states": self._sampler_states(),
            "config_digest": config_digest(self.config),
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


def learning_rate_factor(step: int, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning rate at optimizer step ``step`` as a fraction of ``optimizer.lr``.

    A linear warm-up from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps``, then 1
    (``"constant"``) or a cosine decay that reaches 0 at ``total_steps`` (``"cosine"``,
    Loshchilov & Hutter, SGDR, ICLR 2017).

    Examples:
        >>> learning_rate_factor(0, "cosine", 0, 100), learning_rate_factor(50, "cosine", 0, 100)
        (1.0, 0.5)
        >>> round(learning_rate_factor(100, "cosine", 0, 100), 12)
        0.0
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


MAX_CONSECUTIVE_SKIPS = 20
"""Steps in a row that ``trainer.nonfinite: skip`` may skip before training stops."""


def config_digest(config: ExperimentConfig) -> str:
    """A digest of what defines a model's weights (network, terms, similarity), stored in
    checkpoints so that a config edited after training is recognised."""
    import hashlib
    import json

    data = config.model_dump(mode="json")
    fixed = {k: data.get(k) for k in ("model", "regularizers", "similarity", "weighting",
                                       "regularize")}  # fmt: skip
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def check_finite_field(
    displacement: torch.Tensor, params: Mapping[str, float] | None = None, where: str = ""
) -> None:
    """Refuse a displacement holding NaN or infinite values: no command writes, scores or
    ranks one (a model whose weights are finite can still produce it after a diverged run).

    Raises:
        InputError: naming the parameters and the pair (``where``).
    """
    finite = torch.isfinite(displacement)
    if bool(finite.all()):
        return
    share = 1.0 - float(finite.float().mean())
    setting = ", ".join(f"{k}={v:.4g}" for k, v in (params or {}).items())
    raise InputError(
        f"the model produced a displacement with {share:.1%} NaN or infinite values"
        f"{' at ' + setting if setting else ''}{' on ' + where if where else ''}: its weights "
        "are broken (the training diverged?); nothing was written"
    )


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


def _network_skeleton(config: ExperimentConfig, num_params: int) -> dict[str, torch.Tensor]:
    """The network's weights as ``HyperRegistration`` names them, built on PyTorch's ``meta``
    device (shapes without memory: a config asking for a huge network costs nothing)."""
    with torch.device("meta"):
        net = build_network(config, num_params)
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def build_network(config: ExperimentConfig, num_params: int) -> RegistrationNet:
    """The registration network ``config.model`` describes, conditioned on ``num_params`` free
    parameters (none when ``model.hyper`` is false)."""
    model = config.model
    return RegistrationNet(
        model.ndim,
        enc=model.enc,
        dec=model.dec,
        num_params=num_params if model.hyper else 0,
        hyper_units=model.hyper_units,
        int_steps=model.int_steps,
        int_downsize=model.int_downsize,
        hyper_init_share=model.hyper_init_share,
        conditioning=model.conditioning,
    )


def _check_shapes(
    path: Path, expected: Mapping[str, torch.Tensor], weights: Mapping[str, Any]
) -> None:
    """The checkpoint's network weights have the names and shapes its config's network has."""
    for name, tensor in expected.items():
        stored = weights.get(name)
        if not torch.is_tensor(stored) or tuple(stored.shape) != tuple(tensor.shape):
            found = tuple(stored.shape) if torch.is_tensor(stored) else "missing"
            raise InputError(
                f"{path}: its weights do not match its config ({name}: the config builds "
                f"{tuple(tensor.shape)}, the checkpoint holds {found})"
            )
    extra = sorted(k for k in set(weights) - set(expected) if k.startswith("net."))
    if extra:
        raise InputError(
            f"{path}: its weights do not match its config (unexpected weights: {extra[0]})"
        )


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
    load_plugins(trusted)  # a plugin the caller names that fails is reported as such
    config_data = {**dict(extras.get("config", {})), "plugins": trusted}
    try:
        config = ExperimentConfig.model_validate(config_data)
        free = build_objective(config).space
    except (ValidationError, RegzooError) as exc:
        untrusted = [p for p in stored if p not in trusted]
        if untrusted:
            raise PluginError(
                f"{path}: the model needs the plugin(s) {', '.join(untrusted)} named in the "
                "checkpoint; regzoo never imports code a checkpoint names: if you trust it, "
                f"pass --plugin {untrusted[0]} (Python: load_model(..., plugins=[...]))"
            ) from None
        raise InputError(f"{path}: its stored config is invalid: {exc}") from None
    weights, legacy = drop_flow_shift(state.get("state_dict", {}))
    if legacy:  # written before the flow layer lost its bias and shift (issue 31)
        warnings.warn(
            f"{path}: an older checkpoint; its flow layer's bias and shift (a translation chosen "
            "by the parameters) were dropped",
            UserWarning,
            stacklevel=2,
        )
    _check_shapes(path, _network_skeleton(config, len(free)), weights)
    model = HyperRegistration(config)
    if extras.get("free_parameters") not in (None, model.space.names):
        raise InputError(
            f"{path}: its weights were trained for the free parameters "
            f"{extras['free_parameters']}, but its config gives {model.space.names}"
        )
    digest = extras.get("config_digest")
    if digest is not None and digest != config_digest(config):
        raise InputError(
            f"{path}: its weights were trained for another model than its stored config "
            "describes (the config's network, terms or similarity were changed after training)"
        )
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
