"""The regularizer contract on fixed examples:
[`check_regularizer`][regzoo.testing.contract.check_regularizer].

A valid parameter space; output shape ``(B,)`` and finiteness in 2D and 3D; translation
invariance (zero energy for constant fields); ``R(c u) = c^2 R(u)`` when the class declares
``quadratic = True``; the energy's units ([`check_spacing`][regzoo.testing.contract.check_spacing]);
per-sample parameters (a batch with two parameter vectors equals two single calls); for classes that
declare ``spatial_params = True``, that a constant parameter map ``(B, 1, *spatial)`` gives exactly
(bit for bit, float64) the energy of the scalar parameters and that maps are per sample;
finite, correct gradients (float64 ``gradcheck`` on a small grid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from regzoo.params import ParamSpace
from regzoo.regularizers.base import Regularizer
from regzoo.spatial import Spacing
from regzoo.testing.strategies import random_smooth_field

__all__ = ["check_regularizer", "check_spacing", "constant_maps", "spacing_factor"]


def _sample_params(space: ParamSpace, batch: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    unit = 0.25 + 0.5 * torch.rand(batch, len(space), generator=generator, dtype=torch.float64)
    return space.to_dict(space.denormalize(unit))


def _check_space(cls: type[Regularizer]) -> None:
    space = cls.space
    assert isinstance(space, ParamSpace), f"{cls.__name__}.space must be a ParamSpace"
    assert space.validate({}) == space.defaults()
    sample = space.sample(8, torch.Generator().manual_seed(0))
    assert sample.shape == (8, len(space))
    for spec, column in zip(space, sample.T, strict=True):
        assert bool(((column >= spec.low) & (column <= spec.high)).all()), spec.name
    assert torch.allclose(space.denormalize(space.normalize(sample)), sample, rtol=1e-4, atol=1e-6)


def _check_dimension(
    reg: Regularizer, cls: type[Regularizer], shape: tuple[int, ...], params: Mapping
) -> None:
    name = cls.__name__
    u = random_smooth_field(shape, dtype=torch.float64)
    energy = reg(u, params)
    assert energy.shape == (2,), f"{name}: expected shape (2,), got {tuple(energy.shape)}"
    assert bool(torch.isfinite(energy).all()), f"{name}: non-finite energy {energy}"

    shift = torch.randn(2, len(shape), *([1] * len(shape)), dtype=torch.float64)
    translation = shift.expand_as(u).contiguous()
    zero = reg(translation, params)
    assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-8), (
        f"{name}: a translation must cost nothing, got {zero}"
    )

    check_spacing(reg, u, params, [1.5, 0.75, 2.0][: len(shape)], 2.5)

    if cls.quadratic:
        scaled = reg(3.0 * u, params)
        assert torch.allclose(scaled, 9.0 * energy, rtol=1e-6, atol=1e-10), (
            f"{name}: declares quadratic=True but R(3u) != 9 R(u): {scaled} vs {9 * energy}"
        )

    singles = torch.stack(
        [reg(u[i : i + 1], {k: float(v[i]) for k, v in params.items()})[0] for i in range(2)]
    )
    assert torch.allclose(energy, singles, rtol=1e-6, atol=1e-10), (
        f"{name}: per-sample parameters differ from single calls: {energy} vs {singles}"
    )
    if cls.spatial_params:
        _check_spatial_params(reg, cls, u, params, energy)


def constant_maps(
    params: Mapping[str, torch.Tensor], shape: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Per-sample parameters ``(B,)`` as constant spatial maps ``(B, 1, *shape)``."""
    return {
        k: v.reshape(-1, 1, *[1] * len(shape)).expand(-1, 1, *shape).contiguous()
        for k, v in params.items()
    }


def _check_spatial_params(
    reg: Regularizer,
    cls: type[Regularizer],
    u: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    energy: torch.Tensor,
) -> None:
    """A constant map equals the scalar energy exactly; a map is per sample."""
    name = cls.__name__
    shape = tuple(u.shape[2:])
    for key in params:
        mapped = {**params, **constant_maps({key: params[key]}, shape)}
        constant = reg(u, mapped)
        assert torch.equal(constant, energy), (
            f"{name}: declares spatial_params=True but a constant map of '{key}' gives "
            f"{constant.tolist()}, the scalar parameters {energy.tolist()}"
        )
    maps = constant_maps(params, shape)
    singles = torch.stack(
        [reg(u[i : i + 1], {k: v[i : i + 1] for k, v in maps.items()})[0] for i in range(2)]
    )
    assert torch.allclose(reg(u, maps), singles, rtol=1e-12, atol=1e-300), (
        f"{name}: parameter maps are not per sample"
    )


def _check_gradients(reg: Regularizer, cls: type[Regularizer], params: Mapping) -> None:
    for shape in ((5, 6), (4, 4, 5)):
        u = random_smooth_field(shape, dtype=torch.float64, amplitude=0.2).requires_grad_(True)
        energy = reg(u, params).sum()
        (grad,) = torch.autograd.grad(energy, u)
        assert bool(torch.isfinite(grad).all()), f"{cls.__name__}: non-finite gradient"
        assert torch.autograd.gradcheck(lambda v: reg(v, params), (u,), eps=1e-6, atol=1e-5), (
            f"{cls.__name__}: analytic and numerical gradients differ"
        )


def spacing_factor(cls: type[Regularizer], s: float) -> float | None:
    """What an isotropic rescaling of the grid by ``s`` does to ``cls``'s energy.

    The energy of a displacement in voxels on a grid of spacing ``h`` is an energy of the
    physical field ``u h`` over physical coordinates ``x h``. Rescaling ``h`` by ``s`` scales
    both: first derivatives (``grad u`` in mm per mm) are unchanged, so a first-order energy
    (``derivative_order = 1``) is unchanged; second derivatives scale by ``1/s``, so a
    second-order quadratic energy (``derivative_order = 2``) scales by ``1/s^2``.

    Returns:
        ``R(u; s h) / R(u; h)``, or ``None`` when the class declares no order.
    """
    order = cls.derivative_order
    if order is None:
        return None
    return float(s) ** (2 - 2 * order)


def check_spacing(
    reg: Regularizer,
    u: torch.Tensor,
    params: Mapping[str, float | torch.Tensor],
    spacing: Sequence[float],
    s: float,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-10,
) -> None:
    """Check that ``reg``'s energy is in physical units: isotropic rescaling of the grid by
    ``s`` scales it by [`spacing_factor`][regzoo.testing.contract.spacing_factor] (unchanged for
    first-order energies, ``1/s^2`` for second-order ones).

    An energy that differentiates the displacement in voxels with respect to millimetres (a
    missing [`to_physical`][regzoo.regularizers.functional.to_physical]), or ignores the spacing,
    fails it.

    Raises:
        AssertionError: naming the class, the spacings and both energies.
    """
    cls = type(reg)
    factor = spacing_factor(cls, s)
    if factor is None:
        return
    scaled: Spacing = [float(h) * s for h in spacing]
    base = reg(u, params, list(spacing))
    rescaled = reg(u, params, scaled)
    assert torch.allclose(rescaled, factor * base, rtol=rtol, atol=atol), (
        f"{cls.__name__}: declares derivative_order={cls.derivative_order}, so rescaling the "
        f"spacing {list(spacing)} by {s:g} must scale the energy by {factor:g}: got "
        f"{rescaled.tolist()} vs {(factor * base).tolist()} (is the field made physical with "
        "to_physical(u, spacing) before it is differentiated?)"
    )


def check_regularizer(
    cls: type[Regularizer], *, options: Mapping[str, object] | None = None
) -> None:
    """Run the regularizer contract on ``cls`` (raises ``AssertionError`` on a violation).

    Args:
        cls: a [`Regularizer`][regzoo.regularizers.base.Regularizer] subclass.
        options: construction options, if the class needs any.
    """
    assert isinstance(cls, type) and issubclass(cls, Regularizer), (
        f"{cls!r} is not a Regularizer subclass"
    )
    _check_space(cls)
    reg = cls(**(options or {}))
    params = _sample_params(cls.space, batch=2, seed=1)
    for shape in ((12, 10), (8, 9, 10)):
        _check_dimension(reg, cls, shape, params)
    _check_gradients(reg, cls, params)
