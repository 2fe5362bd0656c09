"""What a model IS: the network, its objective, the free-parameter space and the units.

[`RegistrationModel`][regzoo.registration_model.RegistrationModel] is what [`load_model`][regzoo.checkpoint.load_model] returns and what every
test-time tool (register, refine, the sweep, the explorer, evaluation) uses. How it is trained
lives in [`regzoo.lightning_module`][regzoo.lightning_module] (which wraps one), how it is stored in
[`regzoo.checkpoint`][regzoo.checkpoint]. "The objective of a result" is here too ([`result_objective`][regzoo.registration_model.result_objective],
[`field_objective`][regzoo.registration_model.field_objective]): refinement minimises the same sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from regzoo._errors import InputError
from regzoo.config import ExperimentConfig
from regzoo.nets import RegistrationNet, RegistrationOutput
from regzoo.objective import LossTerms, Objective
from regzoo.resolve import build_objective
from regzoo.spatial import Spacing, warp

__all__ = [
    "RegistrationModel",
    "build_network",
    "check_finite_field",
    "field_objective",
    "result_objective",
]


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
        symmetric=model.symmetric,
    )


class RegistrationModel(nn.Module):
    """A registration network conditioned on the free parameters of its objective.

    Holds the config, the objective (similarity and regularizer terms, with the free space),
    and the network; its state dict (``net.*``) is what checkpoints store.

    Args:
        config: a validated experiment config, or its ``model_dump(mode="json")`` dict (as stored
            in checkpoints).
    """

    def __init__(self, config: ExperimentConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, ExperimentConfig):
            config = ExperimentConfig.model_validate(dict(config))
        self.config = config
        self.objective = build_objective(config)
        self.space = self.objective.space
        self.net = build_network(config, len(self.space))

    @property
    def ndim(self) -> int:
        """Spatial dimensions of the images the model registers (2 or 3)."""
        return self.config.model.ndim

    @property
    def device(self) -> torch.device:
        """The device of the network's weights."""
        for tensor in self.net.parameters():
            return tensor.device
        return torch.device("cpu")

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
        return self.predict(fixed, moving, values)

    def predict(
        self, fixed: torch.Tensor, moving: torch.Tensor, values: torch.Tensor
    ) -> RegistrationOutput:
        """The network's output at physical values ``(B, P)`` (normalised for the network)."""
        unit = self.space.normalize(values) if self.net.num_params else None
        return self.net(fixed, moving, unit)

    def regularized_field(self, output: RegistrationOutput) -> torch.Tensor:
        """The field the objective's energies see: the stationary velocity with
        ``regularize: velocity`` (when the output has one), else the displacement."""
        if self.config.regularize == "velocity" and output.velocity is not None:
            return output.velocity
        return output.displacement


def field_objective(
    objective: Objective,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    displacement: torch.Tensor,
    field: torch.Tensor,
    values: torch.Tensor,
    spacing: Spacing = None,
    labels: torch.Tensor | None = None,
) -> LossTerms:
    """The objective of one field: ``moving`` warped by ``displacement`` against ``fixed``,
    plus every term's energy of ``field`` (the displacement, or the velocity it integrates).

    The one place where a result's objective is computed: [`result_objective`][regzoo.registration_model.result_objective]
    (register, the sweep, the explorer) reads it out, and refinement minimises the same sum
    ([`combine`][regzoo.objective.Objective.combine]; it evaluates the similarity itself, to
    reuse descriptors or to refine under another similarity).

    Args:
        objective: the similarity and regularizer terms (e.g. ``model.objective``).
        fixed: fixed images ``(B, 1, *spatial)``, as the objective expects them.
        moving: moving images, same shape.
        displacement: ``(B, D, *spatial)`` in voxels.
        field: the field the energies see (``displacement``, or the velocity).
        values: the free parameters ``(B, P)`` in the order of ``objective.space``.
        spacing: voxel spacing the energies use (``None``: voxel units).
        labels: the fixed image's label map, for per-label parameters.
    """
    return objective(fixed, warp(moving, displacement), field, values, spacing, labels)


def result_objective(
    model: RegistrationModel,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    output: RegistrationOutput,
    params: Mapping[str, float] | torch.Tensor | None = None,
    *,
    spacing: Spacing = None,
    labels: torch.Tensor | None = None,
) -> LossTerms:
    """The model's own objective of a registration result, exactly as refinement minimises it.

    The energies see the field the model regularises (``regularize: velocity`` or the
    displacement), in the units it was trained in (``spacing`` in mm, through
    [`RegistrationModel.energy_spacing`][regzoo.registration_model.RegistrationModel.energy_spacing]), with the parameter maps of
    per-label parameters built from ``labels``.

    Args:
        model: the trained model.
        fixed: normalised fixed images ``(B, 1, *spatial)`` (as the network sees them).
        moving: normalised moving images, same shape.
        output: the network's (or refinement's) output for them.
        params: free parameters by name (defaults fill the rest), or values ``(B, P)``.
        spacing: the images' voxel spacing in mm.
        labels: the fixed image's integer label map ``(B or 1, 1, *spatial)``.

    Returns:
        Per-sample ``total`` (the objective), ``similarity`` and ``energies`` ``(B,)``.

    Raises:
        InputError: a model with per-label parameters and no ``labels``.
    """
    values = model.parameter_tensor(params, fixed.shape[0])
    with torch.no_grad():
        return field_objective(
            model.objective,
            fixed,
            moving,
            output.displacement,
            model.regularized_field(output),
            values,
            model.energy_spacing(spacing),
            labels,
        )


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
