"""The plugin's own tests: regzoo's reusable contract plus physics of its own."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from regzoo_neohookean import NeoHookean, neo_hookean_energy

from regzoo.regularizers import functional
from regzoo.spatial import identity_grid
from regzoo.testing import (
    check_regularizer,
    check_regularizer_properties,
    displacement_fields,
    random_smooth_field,
)


# --8<-- [start:contract]
def test_regzoo_contract(regularizer_contract):
    # the fixture comes from regzoo's pytest plugin (regzoo.testing.plugin; see conftest.py)
    regularizer_contract(NeoHookean)


def test_contract_by_import():
    check_regularizer(NeoHookean, options={"min_det": 0.05})


def test_regzoo_properties():
    # random fields (zero to folding) and parameters over the physical domain, 2D and 3D:
    # finite values and gradients, R >= 0, R(u + c) = R(u), an energy per mm (first order:
    # unchanged when the spacing is rescaled); quadratic = False skips c^2
    check_regularizer_properties(NeoHookean, max_examples=15)


# --8<-- [end:contract]


def _rotation(theta, ndim):
    rotation = torch.eye(ndim, dtype=torch.float64)
    c, s = math.cos(theta), math.sin(theta)
    rotation[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return rotation


@pytest.mark.parametrize("ndim", [2, 3])
def test_rotating_the_deformed_body_costs_nothing(ndim):
    # frame indifference, for any field: phi' = Q phi has F' = Q F, so the same energy
    @settings(max_examples=15, derandomize=True, database=None, deadline=None)
    @given(u=displacement_fields(ndim), theta=st.floats(-math.pi, math.pi))
    def check(u, theta):
        rotation = _rotation(theta, ndim)
        x = identity_grid(u.shape[2:], dtype=torch.float64)
        rotated = torch.einsum("ij,bj...->bi...", rotation, x + u) - x
        energy = neo_hookean_energy(u, lam=0.5, mu=0.3)
        assert torch.allclose(neo_hookean_energy(rotated, lam=0.5, mu=0.3), energy, rtol=1e-9)

    check()


@pytest.mark.parametrize("shape", [(10, 11), (7, 8, 9)])
def test_small_strain_limit_is_linear_elasticity(shape):
    u = random_smooth_field(shape, dtype=torch.float64, amplitude=1.0)
    for scale in (1e-2, 1e-3):
        nh = neo_hookean_energy(scale * u, lam=0.4, mu=0.2)
        le = functional.linear_elastic_energy(scale * u, lam=0.4, mu=0.2)
        assert torch.allclose(nh / le, torch.ones_like(nh), atol=20 * scale)


def test_finite_rotation_costs_nothing():
    theta = math.radians(30)
    rotation = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    x = identity_grid((8, 8), dtype=torch.float64)
    u = (torch.einsum("ij,j...->i...", rotation, x) - x).unsqueeze(0)
    assert neo_hookean_energy(u, lam=1.0, mu=1.0).item() == pytest.approx(0.0, abs=1e-12)
    # the linear elastic energy is not rotation invariant at 30 degrees
    assert functional.linear_elastic_energy(u, lam=1.0, mu=1.0).item() > 0.05
