"""Property-based checks (hypothesis): random fields, images and parameters instead of fixed
examples, deterministically and in few examples:
[`check_regularizer_properties`][regzoo.testing.properties.check_regularizer_properties] and
[`check_similarity_properties`][regzoo.testing.properties.check_similarity_properties].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from regzoo.regularizers.base import Regularizer
from regzoo.similarity import Similarity
from regzoo.testing.contract import spacing_factor
from regzoo.testing.strategies import (
    field_specs,
    hypothesis_modules,
    image_pair_specs,
    parameter_values,
    run_property,
)

__all__ = ["check_regularizer_properties", "check_similarity_properties"]

_MAX_SHIFT = 2  # voxels, per axis, of the joint translation of image content


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
    """One drawn example of every regularizer property (see
    [`check_regularizer_properties`][regzoo.testing.properties.check_regularizer_properties])."""
    _, st = hypothesis_modules()
    cls = type(reg)
    name = cls.__name__
    spec = data.draw(field_specs(ndim), label="field")
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

    s = data.draw(st.floats(0.25, 4.0), label="spacing scale")
    factor = spacing_factor(cls, s)
    if factor is not None:
        grid = spacing if spacing is not None else (1.0,) * ndim
        _assert_close(
            reg(u, params, [h * s for h in grid]),
            factor * reg(u, params, list(grid)),
            rtol=1e-6,
            atol=1e-12,
            message=f"{name}: declares derivative_order={cls.derivative_order}, so rescaling "
            f"the spacing {list(grid)} by {s:g} must scale the energy by {factor:g} (is the "
            "field made physical with to_physical(u, spacing) before it is differentiated?)",
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
        v = data.draw(field_specs(ndim, shape=spec.shape), label="second field").build()
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
    every run), each a field ([`FieldSpec`][regzoo.testing.strategies.FieldSpec]: zero, constant,
    affine, smooth or rough, up to 5 voxels), per-sample parameters over their physical domain
    ([`parameter_values`][regzoo.testing.strategies.parameter_values],
    edges such as 0 included) and a spacing (none, or anisotropic):

    - the energy is ``(B,)`` and finite, with finite gradients with respect to the field and
      the parameters, in float32 and float64;
    - it is non-negative, unless the class declares ``nonnegative = False``;
    - a constant displacement costs nothing: ``R(u + c) = R(u)`` for any ``u`` and ``c``;
    - the energy is in physical units: rescaling the spacing by any ``s`` leaves a
      first-order energy unchanged and scales a second-order one by ``1/s^2``
      ([`spacing_factor`][regzoo.testing.contract.spacing_factor], from the class's
      ``derivative_order``);
    - if the class declares ``quadratic = True``: ``R(c u) = c^2 R(u)`` for any ``c`` (negative
      and 0 included) and the parallelogram law ``R(u+v) + R(u-v) = 2R(u) + 2R(v)``, which
      together say the energy is a quadratic form (a merely 2-homogeneous energy fails it).

    Args:
        cls: a [`Regularizer`][regzoo.regularizers.base.Regularizer] subclass.
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
    [`check_similarity_properties`][regzoo.testing.properties.check_similarity_properties])."""
    _, st = hypothesis_modules()
    name = type(sim).__name__
    pair = data.draw(image_pair_specs(ndim, low=5, high=12), label="images")
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
    content = data.draw(image_pair_specs(ndim, low=3, high=6), label="content").build()
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
    ([`ImagePairSpec`][regzoo.testing.strategies.ImagePairSpec]: zero, constant, smooth, noise or
    step images, raw-CT offsets up to
    +-1000, the warped image identical, an affine intensity map, noisy or independent):

    - the loss is ``(B,)`` and finite, with finite gradients with respect to both images, in
      float32 and float64, and lies within the class's declared ``bounds``;
    - translation: both images' content translated jointly (up to 2 voxels per axis) inside a
      constant background leaves the loss unchanged, the background keeping a margin of twice
      the declared [`radius`][regzoo.similarity.base.Similarity.radius] free (what is invariant for
      a local loss: windows that reach the border or the content change with a circular shift);
    - a pointwise loss (``radius == 0``) is also unchanged by any joint circular shift.

    Args:
        cls: a [`Similarity`][regzoo.similarity.base.Similarity] subclass.
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
        run_property(example, max_examples, instance, ndim)
