"""Property-based tests (hypothesis) of every registered regularizer and similarity.

The properties live in :mod:`regzoo.testing` (plugin authors call the same functions); here
they run over the whole registry, the checks are shown to catch what they claim to catch, and
the bugs they found stay fixed.
"""

import os

import hypothesis
import pytest
import torch

from regzoo import Regularizer, regularizers
from regzoo.regularizers import functional as Fn
from regzoo.similarity import LNCC, MSE, SIMILARITIES
from regzoo.spatial import gradient
from regzoo.testing import (
    check_regularizer_properties,
    check_similarity_properties,
    displacement_fields,
    parameter_values,
)

# per class and dimension; deterministic (derandomize=True); REGZOO_PROPERTY_EXAMPLES=200 for more
EXAMPLES = int(os.environ.get("REGZOO_PROPERTY_EXAMPLES", "15"))


@pytest.mark.parametrize("name", regularizers.available())
def test_properties_of_every_registered_regularizer(name):
    check_regularizer_properties(regularizers.get(name), max_examples=EXAMPLES)


@pytest.mark.parametrize("name", SIMILARITIES.available())
def test_properties_of_every_registered_similarity(name):
    check_similarity_properties(SIMILARITIES.get(name), max_examples=EXAMPLES)


def test_declarations_of_the_builtins():
    quadratic = {n for n in regularizers.available() if regularizers.get(n).quadratic}
    assert quadratic >= {"diffusion", "linear_elastic", "bending_energy", "curvature"}
    assert not {"total_variation", "jacobian"} & quadratic
    assert Regularizer.quadratic is False  # quadratic is declared, never assumed
    assert (LNCC.bounds, LNCC(window=5).radius) == ((-1.0, 0.0), 2)
    assert (MSE.bounds, MSE().radius) == ((0.0, None), 0)


# --- the checks catch what they claim to catch --------------------------------------------


class TwoHomogeneous(Regularizer):
    """``max_x |grad u|^2``: ``R(c u) = c^2 R(u)``, but not a quadratic form."""

    quadratic = True

    def energy(self, u, params, spacing):
        return gradient(u).pow(2).sum(dim=(1, 2)).flatten(1).amax(1)


class AbsoluteDisplacement(Regularizer):
    """``mean |u|^2``: quadratic, but a translation is not free."""

    quadratic = True

    def energy(self, u, params, spacing):
        return u.pow(2).flatten(1).mean(1)


class SignedDivergence(Regularizer):
    """``mean div u``: translation invariant, but negative for compression."""

    def energy(self, u, params, spacing):
        return torch.diagonal(gradient(u), dim1=1, dim2=2).sum(-1).flatten(1).mean(1)


class PureTotalVariation(Regularizer):
    """``mean |grad u|`` through a plain square root: NaN gradient at ``grad u = 0``."""

    def energy(self, u, params, spacing):
        return gradient(u).pow(2).sum(dim=(1, 2)).sqrt().flatten(1).mean(1)


class UndeclaredLNCC(LNCC):
    """LNCC claiming to be global (``radius = None``)."""

    @property
    def radius(self):
        return None


class PositionWeightedMSE(MSE):
    """MSE weighted by position along the first axis: declares radius 0 but is not
    translation invariant."""

    def loss(self, fixed, warped):
        weight = torch.linspace(0.5, 1.5, fixed.shape[2], dtype=fixed.dtype)
        weight = weight.view(-1, *([1] * (fixed.ndim - 3)))
        return ((fixed - warped).pow(2) * weight).flatten(1).mean(1)


class OffsetMSE(MSE):
    """MSE minus 1: breaks its declared lower bound 0."""

    def loss(self, fixed, warped):
        return super().loss(fixed, warped) - 1.0


@pytest.mark.usefixtures("no_shrinking")
@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (TwoHomogeneous, "parallelogram law"),
        (AbsoluteDisplacement, r"R\(u \+ c\) != R\(u\)"),
        (SignedDivergence, "negative energy"),
        (PureTotalVariation, "non-finite gradient with respect to u"),
    ],
)
def test_regularizer_properties_catch_violations(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_regularizer_properties(cls, max_examples=10)


@pytest.mark.usefixtures("no_shrinking")
@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (UndeclaredLNCC, r"must declare their radius"),
        (PositionWeightedMSE, "changed the loss"),
        (OffsetMSE, "below its declared lower bound 0"),
    ],
)
def test_similarity_properties_catch_violations(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_similarity_properties(cls, max_examples=10)


@hypothesis.settings(max_examples=10, derandomize=True, database=None, deadline=None)
@hypothesis.given(
    u=displacement_fields(3, batch=3),
    params=parameter_values(regularizers.get("linear_elastic").space, batch=3),
)
def test_public_strategies_draw_fields_and_physical_parameters(u, params):
    assert u.shape[:2] == (3, 3) and all(4 <= n <= 8 for n in u.shape[2:])
    assert set(params) == {"lam", "mu"}
    assert all(v.shape == (3,) and bool((v >= 0).all()) for v in params.values())


# --- regressions: the bugs the properties found --------------------------------------------


def test_pure_total_variation_has_a_finite_gradient_at_zero():
    # eps = 0 is physically valid (pure TV); sqrt at 0 gave a NaN gradient
    for eps in (0.0, 1e-30):
        u = torch.zeros(1, 2, 6, 6, requires_grad=True)
        energy = Fn.total_variation_energy(u, eps)
        energy.sum().backward()
        assert u.grad is not None
        assert energy.item() == 0.0 and bool(torch.all(u.grad == 0))
    x = torch.linspace(0, 1, 6, dtype=torch.float64)
    ramp = torch.stack([x.expand(6, 6).T, torch.zeros(6, 6, dtype=torch.float64)])[None]
    assert Fn.total_variation_energy(ramp, 0.0).item() == pytest.approx(0.2)  # |grad u| = 1/5


@pytest.mark.parametrize("offset", [100.0, -1000.0])
def test_lncc_in_float32_on_raw_intensities_matches_float64(offset):
    # the local moments E[x^2] - E[x]^2 cancelled catastrophically in float32: -127 at offset
    # 100 (LNCC lies in [-1, 0]) and -0.004 for two constant images (exactly 0)
    g = torch.Generator().manual_seed(0)
    image = offset + torch.randn(2, 1, 16, 16, 16, generator=g, dtype=torch.float64)
    pairs = [(image, image + 0.5 * torch.randn(image.shape, generator=g, dtype=torch.float64))]
    pairs.append((torch.full_like(image, offset), torch.full_like(image, offset + 1)))
    for fixed, warped in pairs:
        exact = LNCC()(fixed, warped)
        single = LNCC()(fixed.float(), warped.float())
        assert torch.allclose(single.double(), exact, atol=1e-4)
        assert bool(((single >= -1) & (single <= 0)).all())
