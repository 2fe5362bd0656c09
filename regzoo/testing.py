"""Reusable contract and property checks for regularizers and similarities (a pytest plugin).

regzoo installs this module as a pytest plugin (entry point ``pytest11``), so in any project
with regzoo installed a test can ask for the ``regularizer_contract`` fixture, or import
:func:`check_regularizer` directly::

    from regzoo.testing import check_regularizer

    def test_my_regularizer():
        check_regularizer(MyRegularizer)

The checks: a valid parameter space; output shape ``(B,)`` and finiteness in 2D and 3D;
translation invariance (zero energy for constant fields); ``R(c u) = c^2 R(u)`` when the class
declares ``quadratic = True``; per-sample parameters (a batch with two parameter vectors equals
two single calls); for classes that declare ``spatial_params = True``, that a constant parameter
map ``(B, 1, *spatial)`` gives exactly (bit for bit, float64) the energy of the scalar
parameters and that maps are per sample; finite, correct gradients (float64 ``gradcheck`` on a
small grid).

Property-based checks (they need `hypothesis <https://hypothesis.readthedocs.io>`_) draw random
fields, images and parameters instead of fixed examples, deterministically and in few examples:
:func:`check_regularizer_properties` and :func:`check_similarity_properties`. The strategies
they draw from (:func:`displacement_fields`, :func:`parameter_values`) are public too, for a
plugin's own properties.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from regzoo.params import ParamSpace, ParamSpec
from regzoo.regularizers.base import Regularizer
from regzoo.similarity import Similarity
from regzoo.spatial import identity_grid

__all__ = [
    "FieldSpec",
    "ImagePairSpec",
    "check_regularizer",
    "check_regularizer_properties",
    "check_similarity_properties",
    "constant_maps",
    "displacement_fields",
    "parameter_values",
    "random_smooth_field",
    "regularizer_contract",
]


def random_smooth_field(
    shape: tuple[int, ...],
    *,
    batch: int = 2,
    amplitude: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A reproducible smooth random displacement ``(batch, D, *shape)`` (coarse noise upsampled)."""
    generator = torch.Generator().manual_seed(seed)
    field = _smooth_noise(batch, len(shape), tuple(shape), generator)
    return (amplitude * field).to(dtype)


def _smooth_noise(
    batch: int, channels: int, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """Float64 noise on a ``3^D`` grid, upsampled (multi-)linearly to ``shape``."""
    ndim = len(shape)
    coarse = torch.randn(batch, channels, *([3] * ndim), generator=generator, dtype=torch.float64)
    mode = "bilinear" if ndim == 2 else "trilinear"
    return F.interpolate(coarse, size=shape, mode=mode, align_corners=True)


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


# --------------------------------------------------------------------------------------------
# Property-based checks (hypothesis)
#
# hypothesis draws small, readable specifications (shape, kind, amplitude, seed), which are
# built into tensors here: a falsifying example prints as a few numbers, and the tensors are
# reproducible from them.

FIELD_KINDS = ("zero", "constant", "affine", "smooth", "rough")
"""Displacement patterns drawn by :func:`displacement_fields`."""
IMAGE_KINDS = ("zero", "constant", "smooth", "noise", "step")
"""Image patterns drawn by :func:`check_similarity_properties`."""
IMAGE_RELATIONS = ("same", "affine", "noisy", "independent")
"""How the warped image of a drawn pair relates to the fixed one."""

_MAX_SHIFT = 2  # voxels, per axis, of the joint translation of image content


def _hypothesis() -> tuple[Any, Any]:
    """``hypothesis`` and ``hypothesis.strategies``, or an ImportError saying how to get them."""
    try:
        import hypothesis
        from hypothesis import strategies
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "regzoo.testing's property checks need hypothesis: pip install hypothesis"
        ) from exc
    return hypothesis, strategies


def _run_property(example: Callable[..., None], max_examples: int, *args: Any) -> None:
    """Run ``example(*args, data)`` under hypothesis with ``data`` a ``st.data()`` draw:
    deterministic, no example database, no deadline."""
    hypothesis, st = _hypothesis()
    settings = hypothesis.settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[hypothesis.HealthCheck.too_slow],
    )

    def test(data: Any) -> None:
        example(*args, data)

    settings(hypothesis.given(data=st.data())(test))()


def _pattern(
    kind: str, batch: int, channels: int, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """A float64 ``(batch, channels, *shape)`` pattern of magnitude about 1."""
    ndim = len(shape)
    size = (batch, channels, *shape)
    if kind == "zero":
        return torch.zeros(size, dtype=torch.float64)
    if kind == "constant":
        value = torch.randn(
            batch, channels, *([1] * ndim), generator=generator, dtype=torch.float64
        )
        return value.expand(size).contiguous()
    if kind in ("affine", "step"):
        x = (
            identity_grid(shape, dtype=torch.float64)
            - (torch.tensor(shape) - 1).view(-1, *([1] * ndim)) / 2
        )
        matrix = torch.randn(batch, channels, ndim, generator=generator, dtype=torch.float64)
        linear = torch.einsum("bcj,j...->bc...", matrix, x) / max(shape)
        return linear if kind == "affine" else (linear > 0).to(torch.float64)
    if kind == "smooth":
        return _smooth_noise(batch, channels, shape, generator)
    if kind in ("rough", "noise"):
        return torch.randn(size, generator=generator, dtype=torch.float64)
    raise ValueError(f"unknown pattern kind {kind!r}")


@dataclass(frozen=True)
class FieldSpec:
    """A reproducible random displacement, as hypothesis draws it.

    Attributes:
        shape: spatial shape (2 or 3 sizes).
        kind: one of :data:`FIELD_KINDS`: ``zero``, ``constant`` (a translation), ``affine``,
            ``smooth`` (coarse noise upsampled) or ``rough`` (white noise: large gradients,
            folding).
        amplitude: scale of the displacement in voxels (0 gives the zero field).
        seed: seed of the pattern.
        batch: batch size.
    """

    shape: tuple[int, ...]
    kind: str
    amplitude: float
    seed: int
    batch: int = 2

    def build(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The displacement ``(batch, D, *shape)``."""
        generator = torch.Generator().manual_seed(self.seed)
        pattern = _pattern(self.kind, self.batch, len(self.shape), self.shape, generator)
        return (self.amplitude * pattern).to(dtype)


@dataclass(frozen=True)
class ImagePairSpec:
    """A reproducible random (fixed, warped) image pair, as hypothesis draws it.

    Attributes:
        shape: spatial shape (2 or 3 sizes).
        kind: one of :data:`IMAGE_KINDS`, the fixed image's pattern.
        relation: one of :data:`IMAGE_RELATIONS`: the warped image is the same image, an affine
            intensity map of it, a noisy copy, or an independent noise image.
        offset: intensity offset of the fixed image (raw CT intensities reach -1000).
        scale: intensity scale of both images.
        seed: seed of the patterns.
        batch: batch size.
    """

    shape: tuple[int, ...]
    kind: str
    relation: str
    offset: float
    scale: float
    seed: int
    batch: int = 2

    def build(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """The images ``(batch, 1, *shape)`` each."""
        generator = torch.Generator().manual_seed(self.seed)
        pattern = _pattern(self.kind, self.batch, 1, self.shape, generator)
        fixed = self.offset + self.scale * pattern
        if self.relation == "same":
            warped = fixed.clone()
        elif self.relation == "affine":
            gain, shift = torch.randn(2, generator=generator, dtype=torch.float64).tolist()
            warped = 2 * gain * fixed + self.scale * shift
        elif self.relation == "noisy":
            warped = fixed + 0.1 * self.scale * _pattern(
                "noise", self.batch, 1, self.shape, generator
            )
        elif self.relation == "independent":
            warped = self.scale * _pattern("noise", self.batch, 1, self.shape, generator)
        else:
            raise ValueError(f"unknown relation {self.relation!r}")
        return fixed.to(dtype), warped.to(dtype)


def _shapes(ndim: int, low: int, high: int) -> Any:
    _, st = _hypothesis()
    return st.tuples(*([st.integers(low, high)] * ndim))


def _field_specs(ndim: int, *, batch: int = 2, shape: tuple[int, ...] | None = None) -> Any:
    _, st = _hypothesis()
    amplitudes = st.one_of(st.sampled_from([0.0, 1e-6, 1.0, 5.0]), st.floats(0.0, 5.0))
    return st.builds(
        FieldSpec,
        shape=st.just(tuple(shape)) if shape is not None else _shapes(ndim, 4, 8),
        kind=st.sampled_from(FIELD_KINDS),
        amplitude=amplitudes,
        seed=st.integers(0, 2**16 - 1),
        batch=st.just(batch),
    )


def _image_pair_specs(ndim: int, *, low: int, high: int, batch: int = 2) -> Any:
    _, st = _hypothesis()
    return st.builds(
        ImagePairSpec,
        shape=_shapes(ndim, low, high),
        kind=st.sampled_from(IMAGE_KINDS),
        relation=st.sampled_from(IMAGE_RELATIONS),
        offset=st.one_of(st.sampled_from([0.0, -1000.0]), st.floats(-1000.0, 1000.0)),
        scale=st.one_of(st.sampled_from([1.0, 1e-3]), st.floats(1e-3, 10.0)),
        seed=st.integers(0, 2**16 - 1),
        batch=st.just(batch),
    )


def displacement_fields(ndim: int, *, batch: int = 2, dtype: torch.dtype = torch.float64) -> Any:
    """Hypothesis strategy of displacements ``(batch, D, *shape)`` (see :class:`FieldSpec`).

    Sizes 4 to 8 per axis; zero, constant, affine, smooth and rough fields with amplitudes from
    0 to 5 voxels.

    Examples:
        >>> from hypothesis import given
        >>> @given(u=displacement_fields(3))
        ... def test_my_energy_is_finite(u):
        ...     assert torch.isfinite(MyRegularizer()(u)).all()
    """
    return _field_specs(ndim, batch=batch).map(lambda spec: spec.build(dtype))


def _spec_values(spec: ParamSpec) -> Any:
    """Values of one parameter across its physical domain.

    The edges (domain ends, training range, default; without a declared floor, a value below
    the range, negative) and values drawn on the parameter's scale from a decade (log scale) or
    a range width (linear scale) beyond the training range, clamped to the domain: a direct
    call may use any physically valid value.
    """
    _, st = _hypothesis()
    floor, ceiling = spec.domain
    span = (spec.high - spec.low) or 1.0
    # no declared floor: negative values are physically valid too (even on a log scale)
    below = spec.low - span - 1.0 if floor is None else None
    edges = sorted(
        {v for v in (floor, ceiling, spec.low, spec.high, spec.default, below) if v is not None}
    )
    if spec.scale == "log":
        inside = st.floats(math.log(spec.low / 10), math.log(spec.high * 10)).map(math.exp)
    else:
        inside = st.floats(spec.low - span, spec.high + span)

    def clamp(value: float) -> float:
        value = value if floor is None else max(value, floor)
        return value if ceiling is None else min(value, ceiling)

    return st.one_of(st.sampled_from(edges), inside.map(clamp))


def parameter_values(space: ParamSpace, *, batch: int = 2) -> Any:
    """Hypothesis strategy of parameter mappings ``name -> (batch,)`` float64 tensors.

    Each batch element gets its own value, drawn over the parameter's physical domain: its
    edges (e.g. a stiffness of exactly 0), the training range and beyond it (see
    :class:`~regzoo.params.ParamSpec`).
    """
    _, st = _hypothesis()
    return st.fixed_dictionaries(
        {
            spec.name: st.lists(_spec_values(spec), min_size=batch, max_size=batch).map(
                lambda values: torch.tensor(values, dtype=torch.float64)
            )
            for spec in space
        }
    )


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, message: str
) -> None:
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (
        f"{message}: {actual.tolist()} vs {expected.tolist()}"
    )


def _finite_with_gradients(
    name: str, compute: Callable[..., torch.Tensor], batch: int, inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """``compute(*inputs.values())`` (detached), checked to be ``(batch,)`` and finite, with
    finite gradients with respect to every input (differentiated as leaves; keys name them)."""
    leaves = [value.detach().clone().requires_grad_(True) for value in inputs.values()]
    value = compute(*leaves)
    dtype = leaves[0].dtype
    assert value.shape == (batch,), f"{name}: expected shape ({batch},), got {tuple(value.shape)}"
    assert bool(torch.isfinite(value).all()), f"{name}: non-finite value {value.tolist()} ({dtype})"
    grads = torch.autograd.grad(value.sum(), leaves, allow_unused=True)
    for key, grad in zip(inputs, grads, strict=True):
        assert grad is None or bool(torch.isfinite(grad).all()), (
            f"{name}: non-finite gradient with respect to {key} ({dtype})"
        )
    return value.detach()


def _regularizer_example(reg: Regularizer, ndim: int, data: Any) -> None:
    """One drawn example of every regularizer property (see :func:`check_regularizer_properties`)."""
    _, st = _hypothesis()
    cls = type(reg)
    name = cls.__name__
    spec = data.draw(_field_specs(ndim), label="field")
    params = data.draw(parameter_values(cls.space, batch=spec.batch), label="params")
    spacing = data.draw(
        st.one_of(st.none(), st.tuples(*([st.floats(0.5, 3.0)] * ndim))), label="spacing"
    )

    def energy(u: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return reg(u, dict(zip(params, values, strict=True)), spacing)

    for dtype in (torch.float32, torch.float64):
        inputs = {"u": spec.build(dtype)}
        inputs.update({f"parameter '{key}'": v.to(dtype) for key, v in params.items()})
        value = _finite_with_gradients(name, energy, spec.batch, inputs)  # float64 last
    u = spec.build()
    if cls.nonnegative:
        assert bool((value >= -1e-12).all()), f"{name}: negative energy {value.tolist()}"

    shift = data.draw(
        st.lists(st.floats(-10.0, 10.0), min_size=spec.batch * ndim, max_size=spec.batch * ndim),
        label="translation",
    )
    constant = torch.tensor(shift, dtype=torch.float64).view(spec.batch, ndim, *([1] * ndim))
    _assert_close(
        reg(u + constant, params, spacing),
        value,
        rtol=1e-6,
        atol=1e-9,
        message=f"{name}: R(u + c) != R(u) for a constant displacement c",
    )

    if cls.quadratic:
        c = data.draw(st.floats(-10.0, 10.0), label="scale")
        _assert_close(
            reg(c * u, params, spacing),
            c**2 * value,
            rtol=1e-9,
            atol=1e-12,
            message=f"{name}: declares quadratic=True but R(c u) != c^2 R(u) for c={c}",
        )
        v = data.draw(_field_specs(ndim, shape=spec.shape), label="second field").build()
        lhs = reg(u + v, params, spacing) + reg(u - v, params, spacing)
        rhs = 2 * value + 2 * reg(v, params, spacing)
        _assert_close(
            lhs,
            rhs,
            rtol=1e-9,
            atol=1e-12,
            message=f"{name}: declares quadratic=True but the parallelogram law "
            "R(u+v) + R(u-v) = 2R(u) + 2R(v) fails",
        )


def check_regularizer_properties(
    cls: type[Regularizer],
    *,
    options: Mapping[str, object] | None = None,
    max_examples: int = 20,
) -> None:
    """Property-based checks of a regularizer over random fields and parameters, 2D and 3D.

    For ``max_examples`` drawn examples per dimension (deterministic: the same examples on
    every run), each a field (:class:`FieldSpec`: zero, constant, affine, smooth or rough, up
    to 5 voxels), per-sample parameters over their physical domain (:func:`parameter_values`,
    edges such as 0 included) and a spacing (none, or anisotropic):

    - the energy is ``(B,)`` and finite, with finite gradients with respect to the field and
      the parameters, in float32 and float64;
    - it is non-negative, unless the class declares ``nonnegative = False``;
    - a constant displacement costs nothing: ``R(u + c) = R(u)`` for any ``u`` and ``c``;
    - if the class declares ``quadratic = True``: ``R(c u) = c^2 R(u)`` for any ``c`` (negative
      and 0 included) and the parallelogram law ``R(u+v) + R(u-v) = 2R(u) + 2R(v)``, which
      together say the energy is a quadratic form (a merely 2-homogeneous energy fails it).

    Args:
        cls: a :class:`~regzoo.regularizers.Regularizer` subclass.
        options: construction options, if the class needs any.
        max_examples: examples per dimension (hypothesis's ``max_examples``).

    Raises:
        AssertionError: on a violation; hypothesis prints the (shrunk) falsifying example.
        ImportError: if hypothesis is not installed.
    """
    _check_in_2d_and_3d(cls, Regularizer, options, _regularizer_example, max_examples)


def _translate_content(
    images: Sequence[torch.Tensor], margin: int, backgrounds: Sequence[float], shift: Sequence[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each image padded by ``margin`` voxels of its constant background, before and after a
    joint translation of the content by ``shift`` (``|shift| <= margin``)."""
    ndim = len(shift)
    dims = tuple(range(2, 2 + ndim))
    padded = [
        F.pad(image, [margin] * (2 * ndim), value=background)
        for image, background in zip(images, backgrounds, strict=True)
    ]
    return padded, [torch.roll(image, tuple(shift), dims) for image in padded]


def _similarity_example(sim: Similarity, ndim: int, data: Any) -> None:
    """One drawn example of every similarity property (see
    :func:`check_similarity_properties`)."""
    _, st = _hypothesis()
    name = type(sim).__name__
    pair = data.draw(_image_pair_specs(ndim, low=5, high=12), label="images")
    low, high = type(sim).bounds
    for dtype in (torch.float32, torch.float64):
        fixed, warped = pair.build(dtype)
        inputs = {"fixed": fixed, "warped": warped}
        value = _finite_with_gradients(name, sim, pair.batch, inputs)
        tol = 1e-6
        assert low is None or bool((value >= low - tol * (1 + abs(low))).all()), (
            f"{name}: loss {value.tolist()} below its declared lower bound {low} ({dtype})"
        )
        assert high is None or bool((value <= high + tol * (1 + abs(high))).all()), (
            f"{name}: loss {value.tolist()} above its declared upper bound {high} ({dtype})"
        )

    radius = sim.radius
    margin = 2 * (radius or 0) + _MAX_SHIFT
    content = data.draw(_image_pair_specs(ndim, low=3, high=6), label="content").build()
    backgrounds = data.draw(
        st.tuples(st.floats(-2.0, 2.0), st.floats(-2.0, 2.0)), label="backgrounds"
    )
    shift = data.draw(st.tuples(*([st.integers(-_MAX_SHIFT, _MAX_SHIFT)] * ndim)), label="shift")
    before, after = _translate_content(content, margin, backgrounds, shift)
    _assert_close(
        sim(*after),
        sim(*before),
        rtol=1e-9,
        atol=1e-12,
        message=f"{name}: a joint translation by {shift} of both images' content inside a "
        f"constant background ({margin} voxels) changed the loss; a loss that looks at "
        "neighbourhoods must declare their radius (Similarity.radius)",
    )
    if radius == 0:
        fixed, warped = pair.build()
        roll = data.draw(st.tuples(*[st.integers(-n, n) for n in pair.shape]), label="roll")
        dims = tuple(range(2, 2 + ndim))
        rolled = sim(torch.roll(fixed, roll, dims), torch.roll(warped, roll, dims))
        _assert_close(
            rolled,
            sim(fixed, warped),
            rtol=1e-9,
            atol=1e-12,
            message=f"{name}: declares radius 0 (pointwise) but a joint circular shift by "
            f"{roll} changed the loss",
        )


def check_similarity_properties(
    cls: type[Similarity],
    *,
    options: Mapping[str, object] | None = None,
    max_examples: int = 20,
) -> None:
    """Property-based checks of a similarity loss over random image pairs, 2D and 3D.

    For ``max_examples`` drawn examples per dimension (deterministic), each an image pair
    (:class:`ImagePairSpec`: zero, constant, smooth, noise or step images, raw-CT offsets up to
    +-1000, the warped image identical, an affine intensity map, noisy or independent):

    - the loss is ``(B,)`` and finite, with finite gradients with respect to both images, in
      float32 and float64, and lies within the class's declared ``bounds``;
    - translation: both images' content translated jointly (up to 2 voxels per axis) inside a
      constant background leaves the loss unchanged, the background keeping a margin of twice
      the declared :attr:`~regzoo.similarity.Similarity.radius` free (what is invariant for a
      local loss: windows that reach the border or the content change with a circular shift);
    - a pointwise loss (``radius == 0``) is also unchanged by any joint circular shift.

    Args:
        cls: a :class:`~regzoo.similarity.Similarity` subclass.
        options: construction options, if the class needs any.
        max_examples: examples per dimension (hypothesis's ``max_examples``).

    Raises:
        AssertionError: on a violation; hypothesis prints the (shrunk) falsifying example.
        ImportError: if hypothesis is not installed.
    """
    _check_in_2d_and_3d(cls, Similarity, options, _similarity_example, max_examples)


def _check_in_2d_and_3d(
    cls: type,
    base: type,
    options: Mapping[str, Any] | None,
    example: Callable[..., None],
    max_examples: int,
) -> None:
    """Instantiate ``cls`` (a ``base`` subclass) and run one property ``example`` in 2D and 3D."""
    assert isinstance(cls, type) and issubclass(cls, base), (
        f"{cls!r} is not a {base.__name__} subclass"
    )
    instance = cls(**(options or {}))
    for ndim in (2, 3):
        _run_property(example, max_examples, instance, ndim)
