"""Random fields, images and parameters: the examples the checks draw (hypothesis strategies).

[`random_smooth_field`][regzoo.testing.strategies.random_smooth_field] builds one reproducible
smooth field (no hypothesis needed); the strategies
[`displacement_fields`][regzoo.testing.strategies.displacement_fields] and
[`parameter_values`][regzoo.testing.strategies.parameter_values] draw random ones for a plugin's own
properties, from small readable specifications ([`FieldSpec`][regzoo.testing.strategies.FieldSpec],
[`ImagePairSpec`][regzoo.testing.strategies.ImagePairSpec]) that a falsifying example prints as a
few numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from regzoo.params import ParamSpace, ParamSpec
from regzoo.spatial import identity_grid

__all__ = [
    "FIELD_KINDS",
    "IMAGE_KINDS",
    "IMAGE_RELATIONS",
    "FieldSpec",
    "ImagePairSpec",
    "displacement_fields",
    "field_specs",
    "hypothesis_modules",
    "image_pair_specs",
    "parameter_values",
    "random_smooth_field",
    "run_property",
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


FIELD_KINDS = ("zero", "constant", "affine", "smooth", "rough")
"""Displacement patterns drawn by
[`displacement_fields`][regzoo.testing.strategies.displacement_fields]."""
IMAGE_KINDS = ("zero", "constant", "smooth", "noise", "step")
"""Image patterns drawn by
[`check_similarity_properties`][regzoo.testing.properties.check_similarity_properties]."""
IMAGE_RELATIONS = ("same", "affine", "noisy", "independent")
"""How the warped image of a drawn pair relates to the fixed one."""


def hypothesis_modules() -> tuple[Any, Any]:
    """``hypothesis`` and ``hypothesis.strategies``, or an ImportError saying how to get them."""
    try:
        import hypothesis
        from hypothesis import strategies
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "regzoo.testing's property checks need hypothesis: pip install hypothesis"
        ) from exc
    return hypothesis, strategies


def run_property(example: Callable[..., None], max_examples: int, *args: Any) -> None:
    """Run ``example(*args, data)`` under hypothesis with ``data`` a ``st.data()`` draw:
    deterministic, no example database, no deadline."""
    hypothesis, st = hypothesis_modules()
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
        kind: one of [`FIELD_KINDS`][regzoo.testing.strategies.FIELD_KINDS]: ``zero``, ``constant``
            (a translation), ``affine``, ``smooth`` (coarse noise upsampled) or ``rough`` (white
            noise: large gradients, folding).
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
        kind: one of [`IMAGE_KINDS`][regzoo.testing.strategies.IMAGE_KINDS], the fixed image's
            pattern.
        relation: one of [`IMAGE_RELATIONS`][regzoo.testing.strategies.IMAGE_RELATIONS]: the warped
            image is the same image, an affine intensity map of it, a noisy copy, or an independent
            noise image.
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
    _, st = hypothesis_modules()
    return st.tuples(*([st.integers(low, high)] * ndim))


def field_specs(ndim: int, *, batch: int = 2, shape: tuple[int, ...] | None = None) -> Any:
    """Hypothesis strategy of [`FieldSpec`][regzoo.testing.strategies.FieldSpec] (sizes 4 to 8 per
    axis unless ``shape``)."""
    _, st = hypothesis_modules()
    amplitudes = st.one_of(st.sampled_from([0.0, 1e-6, 1.0, 5.0]), st.floats(0.0, 5.0))
    return st.builds(
        FieldSpec,
        shape=st.just(tuple(shape)) if shape is not None else _shapes(ndim, 4, 8),
        kind=st.sampled_from(FIELD_KINDS),
        amplitude=amplitudes,
        seed=st.integers(0, 2**16 - 1),
        batch=st.just(batch),
    )


def image_pair_specs(ndim: int, *, low: int, high: int, batch: int = 2) -> Any:
    """Hypothesis strategy of [`ImagePairSpec`][regzoo.testing.strategies.ImagePairSpec] (sizes
    ``low`` to ``high`` per axis)."""
    _, st = hypothesis_modules()
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
    """Hypothesis strategy of displacements ``(batch, D, *shape)`` (see
    [`FieldSpec`][regzoo.testing.strategies.FieldSpec]).

    Sizes 4 to 8 per axis; zero, constant, affine, smooth and rough fields with amplitudes from
    0 to 5 voxels.

    Examples:
        >>> from hypothesis import given
        >>> @given(u=displacement_fields(3))
        ... def test_my_energy_is_finite(u):
        ...     assert torch.isfinite(MyRegularizer()(u)).all()
    """
    return field_specs(ndim, batch=batch).map(lambda spec: spec.build(dtype))


def _spec_values(spec: ParamSpec) -> Any:
    """Values of one parameter across its physical domain.

    The edges (domain ends, training range, default; without a declared floor, a value below
    the range, negative) and values drawn on the parameter's scale from a decade (log scale) or
    a range width (linear scale) beyond the training range, clamped to the domain: a direct
    call may use any physically valid value.
    """
    _, st = hypothesis_modules()
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
    [`ParamSpec`][regzoo.params.ParamSpec]).
    """
    _, st = hypothesis_modules()
    return st.fixed_dictionaries(
        {
            spec.name: st.lists(_spec_values(spec), min_size=batch, max_size=batch).map(
                lambda values: torch.tensor(values, dtype=torch.float64)
            )
            for spec in space
        }
    )
