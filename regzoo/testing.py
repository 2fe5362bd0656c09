"""Reusable contract checks for regularizers (a pytest plugin for plugin authors).

regzoo installs this module as a pytest plugin (entry point ``pytest11``), so in any project
with regzoo installed a test can ask for the ``regularizer_contract`` fixture, or import
:func:`check_regularizer` directly::

    from regzoo.testing import check_regularizer

    def test_my_regularizer():
        check_regularizer(MyRegularizer)

The checks: a valid parameter space; output shape ``(B,)`` and finiteness in 2D and 3D;
translation invariance (zero energy for constant fields); ``R(c u) = c^2 R(u)`` when the class
declares ``quadratic = True``; per-sample parameters (a batch with two parameter vectors equals
two single calls); finite, correct gradients (float64 ``gradcheck`` on a small grid).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F

from regzoo.params import ParamSpace
from regzoo.regularizers.base import Regularizer

__all__ = ["check_regularizer", "random_smooth_field", "regularizer_contract"]


def random_smooth_field(
    shape: tuple[int, ...],
    *,
    batch: int = 2,
    amplitude: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A reproducible smooth random displacement ``(batch, D, *shape)`` (coarse noise upsampled)."""
    ndim = len(shape)
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, ndim, *([3] * ndim), generator=generator, dtype=torch.float64)
    mode = "bilinear" if ndim == 2 else "trilinear"
    field = F.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return (amplitude * field).to(dtype)


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


def _check_gradients(reg: Regularizer, cls: type[Regularizer], params: Mapping) -> None:
    for shape in ((5, 6), (4, 4, 5)):
        u = random_smooth_field(shape, dtype=torch.float64, amplitude=0.2).requires_grad_(True)
        energy = reg(u, params).sum()
        (grad,) = torch.autograd.grad(energy, u)
        assert bool(torch.isfinite(grad).all()), f"{cls.__name__}: non-finite gradient"
        assert torch.autograd.gradcheck(lambda v: reg(v, params), (u,), eps=1e-6, atol=1e-5), (
            f"{cls.__name__}: analytic and numerical gradients differ"
        )


def check_regularizer(
    cls: type[Regularizer], *, options: Mapping[str, object] | None = None
) -> None:
    """Run the regularizer contract on ``cls`` (raises ``AssertionError`` on a violation).

    Args:
        cls: a :class:`~regzoo.regularizers.Regularizer` subclass.
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


@pytest.fixture
def regularizer_contract() -> Callable[..., None]:
    """Pytest fixture returning :func:`check_regularizer`."""
    return check_regularizer
