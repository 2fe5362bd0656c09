"""The [`Regularizer`][regzoo.regularizers.base.Regularizer] base class and the regularizer
registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import nn

from regzoo._errors import InputError
from regzoo.params import ParamSpace
from regzoo.registry import NoOptions, Registry
from regzoo.spatial import Spacing, check_field

__all__ = ["NoOptions", "Regularizer", "RegularizerParams", "regularizer"]

RegularizerParams = Mapping[str, float | torch.Tensor]
RESERVED_NAMES = frozenset({"alpha"})


class Regularizer(nn.Module):
    """Base class of registered regularizers.

    Subclasses declare:

    - ``space``: the [`ParamSpace`][regzoo.params.ParamSpace] of their physical parameters (empty
      for parameter-free energies such as diffusion);
    - ``quadratic``: set True to declare ``R(c u) = c^2 R(u)`` for every ``c`` (a quadratic
      form in ``u``); off by default, and checked by [`regzoo.testing`][regzoo.testing] when
      declared;
    - ``derivative_order``: the order of the spatial derivatives of the field in the energy
      density, which fixes its units: rescaling the voxel spacing by ``s`` leaves a
      first-order energy (the default, ``1``) unchanged and scales a second-order quadratic
      one (``2``) by ``1/s^2``; checked by [`regzoo.testing`][regzoo.testing]. ``None`` declares no
      such scaling (e.g. a sum of first- and second-order terms);
    - ``nonnegative``: ``R >= 0`` for every field and every parameter value in the physical
      domain (the default; set False for an energy that may be negative);
    - ``spatial_params``: set True when [`energy`][regzoo.regularizers.base.Regularizer.energy]
      accepts a parameter as a spatial map ``(B, 1, *spatial)`` on the fixed grid (its density
      weighted pointwise), which makes the term usable with per-label parameters;
      [`regzoo.testing.check_regularizer`][regzoo.testing.contract.check_regularizer] then checks
      that a constant map gives exactly the scalar energy;
    - ``Options``: a pydantic model of construction options (validated from configs);
    - [`energy`][regzoo.regularizers.base.Regularizer.energy]: the energy per batch element.

    Call as ``reg(u, params, spacing=None) -> (B,)`` where ``params`` maps each declared name to
    a float, a ``(B,)`` tensor or (``spatial_params``) a map ``(B, 1, *spatial)``; missing names
    take their defaults.
    """

    space: ClassVar[ParamSpace] = ParamSpace()
    quadratic: ClassVar[bool] = False
    derivative_order: ClassVar[int | None] = 1
    nonnegative: ClassVar[bool] = True
    spatial_params: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions
    registered_name: ClassVar[str]

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = self.Options(**options)

    def forward(
        self,
        u: torch.Tensor,
        params: RegularizerParams | None = None,
        spacing: Spacing = None,
    ) -> torch.Tensor:
        """Energy of displacement ``u`` ``(B, D, *spatial)`` per batch element ``(B,)``."""
        check_field(u, type(self).__name__)
        return self.energy(
            u, self.resolve_params(params, batch=u.shape[0], spatial=tuple(u.shape[2:])), spacing
        )

    def resolve_params(
        self,
        params: RegularizerParams | None,
        *,
        batch: int,
        spatial: tuple[int, ...] | None = None,
    ) -> dict[str, float | torch.Tensor]:
        """Fill defaults and check names, float values and tensor shapes.

        Floats are checked against each parameter's physical domain (a direct call may use any
        physically valid value; the declared ``[low, high]`` is only the default training range).
        Tensors are ``(batch,)``, or maps ``(batch, 1, *spatial)`` when the class declares
        ``spatial_params``.

        Raises:
            KeyError: unknown parameter name (close matches named).
            ValueError: a float outside its physical domain, or a tensor of another shape.
        """
        params = dict(params or {})
        floats = {k: v for k, v in params.items() if not isinstance(v, torch.Tensor)}
        unknown = [k for k in params if k not in self.space]
        if unknown:
            self.space.validate({unknown[0]: 0.0})  # raises the unknown-name KeyError
        resolved: dict[str, float | torch.Tensor] = {
            spec.name: spec.check_domain(floats.get(spec.name, spec.default)) for spec in self.space
        }
        shapes: list[tuple[int, ...]] = [(batch,)]
        if self.spatial_params and spatial is not None:
            shapes.append((batch, 1, *spatial))
        for name, value in params.items():
            if isinstance(value, torch.Tensor):
                if tuple(value.shape) not in shapes:
                    expected = " or ".join(str(s) for s in shapes)
                    raise InputError(
                        f"{type(self).__name__}: parameter '{name}' must be a float or a tensor "
                        f"of shape {expected}, got shape {tuple(value.shape)}"
                    )
                resolved[name] = value
        return resolved

    def energy(
        self, u: torch.Tensor, params: Mapping[str, float | torch.Tensor], spacing: Spacing
    ) -> torch.Tensor:
        """Compute the energy ``(B,)``; ``params`` holds every declared parameter."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())


def _check_regularizer(cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
        raise TypeError(f"a regularizer must subclass regzoo.regularizers.Regularizer, got {cls!r}")
    if not isinstance(cls.space, ParamSpace):
        raise TypeError(f"{cls.__name__}.space must be a ParamSpace")
    for name in cls.space.names:
        if name in RESERVED_NAMES or "." in name:
            raise InputError(
                f"{cls.__name__}: parameter name '{name}' is reserved or contains '.'; "
                "the term weight 'alpha' is added by the config"
            )


REGULARIZERS: Registry[Regularizer] = Registry(
    "regularizer",
    "regzoo.regularizers",
    contract=(
        "A Regularizer subclass with a ParamSpace `space` of its own physical parameters; "
        "`reg(u, params, spacing=None)` returns the energy per batch element (B,) for a "
        "displacement u (B, D, *spatial) in 2D and 3D, differentiable in u."
    ),
    check=_check_regularizer,
)
"""The registry of regularizers: built-ins and the `regzoo.regularizers` entry points."""
regularizer = REGULARIZERS.register
"""Class decorator registering a regularizer: `@regularizer("name")` (`REGULARIZERS.register`)."""
