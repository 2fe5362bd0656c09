"""What a model IS: the network, its objective, the free-parameter space and the units.

[`RegistrationModel`][regzoo.registration_model.RegistrationModel] is what
[`load_model`][regzoo.checkpoint.load_model] returns and what every test-time tool (register,
refine, the sweep, the explorer, evaluation) uses. How it is trained lives in
[`regzoo.lightning_module`][regzoo.lightning_module] (which wraps one), how it is stored in
[`regzoo.checkpoint`][regzoo.checkpoint]. "The objective of a result" is here too
([`result_objective`][regzoo.registration_model.result_objective],
[`field_objective`][regzoo.registration_model.field_objective]): refinement minimises the same sum.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regzoo._errors import InputError
from regzoo.config import ExperimentConfig
from regzoo.nets import RegistrationNet, RegistrationOutput
from regzoo.objective import LossTerms, Objective
from regzoo.resolve import build_objective
from regzoo.spatial import Spacing, resize_flow, warp

__all__ = [
    "RegistrationModel",
    "TrainingGrid",
    "build_network",
    "check_finite_field",
    "field_objective",
    "result_objective",
]


def build_network(config: ExperimentConfig, num_params: int) -> RegistrationNet:
    """The registration network ``config.model`` describes, conditioned on ``num_params``
    numbers: the free space's [`feature_size`][regzoo.params.ParamSpace.feature_size] (one per
    parameter, two per periodic one; none when ``model.hyper`` is false)."""
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


logger = logging.getLogger("regzoo")

SAME_SPACING = 0.02
"""Relative spacing difference below which an image is taken to be at the training spacing."""


@dataclass(frozen=True)
class TrainingGrid:
    """The grid a model was trained on: the median voxel spacing (mm) and shape of its
    training images, recorded in the checkpoint (``regzoo`` extras, ``training_grid``).

    Attributes:
        spacing: voxel size along each array axis, in mm.
        shape: the typical spatial shape.
    """

    spacing: tuple[float, ...]
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, list[float] | list[int]]:
        """The checkpoint's record: ``{"spacing": [...], "shape": [...]}``."""
        return {"spacing": list(self.spacing), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrainingGrid | None:
        """The grid a checkpoint records, or ``None`` for one that records none."""
        if not data or "spacing" not in data:
            return None
        return cls(tuple(float(s) for s in data["spacing"]), tuple(int(n) for n in data["shape"]))


def _spacing_values(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    """One spacing per axis from a number, a sequence, a ``(D,)`` or a ``(B, D)`` tensor."""
    if spacing is None:
        return None
    if isinstance(spacing, int | float):
        return (float(spacing),) * ndim
    values = torch.as_tensor(spacing, dtype=torch.float64).reshape(-1, ndim)[0]
    return tuple(float(v) for v in values)


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
        self.net = build_network(config, self.space.feature_size)  # periodic: (cos, sin)
        self.training_grid: TrainingGrid | None = None
        """The grid the model was trained on (``None``: unknown, e.g. an old checkpoint)."""
        self.at_training_spacing = True
        """Run the network at `training_grid`'s spacing when an image's spacing is
        given (``False``: on the image's own grid, as before regzoo recorded the grid)."""

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
        *,
        spacing: Spacing = None,
        at_training_spacing: bool | None = None,
    ) -> RegistrationOutput:
        """Predict the field for images ``(B, 1, *spatial)`` at physical ``params``.

        ``params`` is a mapping (short or full names; defaults fill the rest) or a tensor
        ``(B, P)`` / ``(P,)`` of physical values in the order of ``self.space``. Plain
        (non-hyper) models ignore it. With the images' ``spacing`` (mm) the network runs at
        the spacing it was trained at ([`predict`][regzoo.registration_model.RegistrationModel.predict]).
        """
        values = self.parameter_tensor(params, fixed.shape[0])
        return self.predict(
            fixed, moving, values, spacing=spacing, at_training_spacing=at_training_spacing
        )

    def network_size(
        self,
        shape: Sequence[int],
        spacing: Spacing,
        at_training_spacing: bool | None = None,
    ) -> tuple[int, ...] | None:
        """The grid size the network sees an image of ``shape`` and ``spacing`` (mm) at: the
        same physical extent (corner to corner) at the training spacing; ``None`` when the
        image is run on its own grid (no spacing given, ``at_training_spacing`` off, no
        recorded training grid, or already at the training spacing within 2%).

        Raises:
            InputError: an image that would be smaller than the network's minimum size
                (``2^len(model.enc)`` voxels per axis) at the training spacing.
        """
        use = self.at_training_spacing if at_training_spacing is None else at_training_spacing
        values = _spacing_values(spacing, len(shape))
        if not use or values is None:
            return None
        grid = self.training_grid
        if grid is None:
            self._notice_no_grid()
            return None
        if len(grid.spacing) != len(shape):
            return None  # the dimension check of the caller names the mismatch
        if all(abs(s / t - 1.0) < SAME_SPACING for s, t in zip(values, grid.spacing, strict=True)):
            return None
        size = tuple(
            max(1, round((n - 1) * s / t) + 1)
            for n, s, t in zip(shape, values, grid.spacing, strict=True)
        )
        minimum = int(getattr(self.net, "multiple", 1))
        if min(size) < minimum:
            shown = "x".join(f"{s:.4g}" for s in values)
            raise InputError(
                f"an image of {'x'.join(map(str, shape))} voxels at {shown} mm spacing is "
                f"{'x'.join(map(str, size))} voxels at the model's training spacing "
                f"({'x'.join(f'{t:.4g}' for t in grid.spacing)} mm), fewer than the network's "
                f"minimum of {minimum} per axis; register it on its own grid (--native-grid, "
                "Python: at_training_spacing=False)"
            )
        if tuple(size) == tuple(shape):
            return None
        return size

    def _notice_no_grid(self) -> None:
        """Say once that the model cannot run at its training spacing."""
        if getattr(self, "_told_no_grid", False):
            return
        self._told_no_grid = True
        logger.warning(
            "regzoo: the checkpoint records no training grid (written before regzoo recorded "
            "it): the network runs on each image's own grid"
        )

    def predict(
        self,
        fixed: torch.Tensor,
        moving: torch.Tensor,
        values: torch.Tensor,
        *,
        spacing: Spacing = None,
        at_training_spacing: bool | None = None,
    ) -> RegistrationOutput:
        """The network's output at physical values ``(B, P)`` (conditioned on their
        [`features`][regzoo.params.ParamSpace.features]).

        With the images' ``spacing`` (mm) and a model that knows its `training_grid`,
        the network runs at the training spacing: both images are resampled to it (keeping
        their physical extent, [`network_size`][regzoo.registration_model.RegistrationModel.network_size]), the network predicts, and its field is
        carried back to the images' grid in physical units (each axis's voxel displacement
        scaled by the spacing ratio, then interpolated: [`resize_flow`][regzoo.spatial.resize_flow]).
        This is the one place where every command and the Python API run the network.
        ``at_training_spacing=False`` (or the model's attribute of that name) runs it on the
        images' own grid.

        Raises:
            InputError: an image the network cannot be run on at its training spacing.
        """
        unit = self.space.features(values) if self.net.num_params else None
        size = self.network_size(fixed.shape[2:], spacing, at_training_spacing)
        if size is None:
            return self.net(fixed, moving, unit)
        shape = tuple(fixed.shape[2:])
        mode = "bilinear" if len(shape) == 2 else "trilinear"

        def resample(image: torch.Tensor) -> torch.Tensor:
            return F.interpolate(image, size=size, mode=mode, align_corners=True)

        output = self.net(resample(fixed), resample(moving), unit)
        velocity = output.velocity
        return RegistrationOutput(
            displacement=resize_flow(output.displacement, shape),
            velocity=None if velocity is None else resize_flow(velocity, shape),
        )

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

    The one place where a result's objective is computed:
    [`result_objective`][regzoo.registration_model.result_objective] (register, the sweep, the
    explorer) reads it out, and refinement minimises the same sum
    ([`combine`][regzoo.objective.Objective.combine]; it evaluates the similarity itself, to reuse
    descriptors or to refine under another similarity).

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
