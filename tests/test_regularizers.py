"""Analytic checks of the built-in energies, and the contract over every registered one."""

import pytest
import torch

from regzoo import regularizers
from regzoo.regularizers import functional as Fn
from regzoo.spatial import identity_grid
from regzoo.testing import check_regularizer, random_smooth_field

SHAPES = [(9, 8), (6, 7, 5)]


def linear_field(A, shape):
    x = identity_grid(shape, dtype=torch.float64)
    return torch.einsum("ij,j...->i...", A, x).unsqueeze(0)


@pytest.mark.parametrize("name", regularizers.available())
def test_contract_of_every_registered_regularizer(name):
    check_regularizer(regularizers.get(name))


@pytest.mark.parametrize("shape", SHAPES)
def test_elastic_energy_of_linear_field_is_exact(shape):
    D = len(shape)
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam, mu = 0.7, 0.3
    energy = Fn.linear_elastic_energy(linear_field(A, shape), lam, mu)
    expected = mu / 4 * ((A + A.T) ** 2).sum() + lam / 2 * torch.trace(A) ** 2
    assert energy.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_expansion_has_only_the_divergence_term(shape):
    D, c = len(shape), 0.1
    u = linear_field(c * torch.eye(D, dtype=torch.float64), shape)
    lam_term = Fn.linear_elastic_energy(u, lam=1.0, mu=0.0)
    assert lam_term.item() == pytest.approx(0.5 * (D * c) ** 2, rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_shear_pairs_channel_k_with_axis_k(shape):
    # u_0 = c x_1: divergence-free; a reversed channel/axis pairing would see d_0 u_0 = c
    D, c = len(shape), 0.2
    A = torch.zeros(D, D, dtype=torch.float64)
    A[0, 1] = c
    u = linear_field(A, shape)
    assert Fn.linear_elastic_energy(u, lam=1.0, mu=0.0).item() == pytest.approx(0.0, abs=1e-14)
    shear = Fn.linear_elastic_energy(u, lam=0.0, mu=1.0).item()
    assert shear == pytest.approx(1 / 4 * 2 * c**2, rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_infinitesimal_rotation_has_no_shear_and_no_divergence(shape):
    D = len(shape)
    W = torch.zeros(D, D, dtype=torch.float64)
    W[0, 1], W[1, 0] = 0.05, -0.05  # antisymmetric
    energy = Fn.linear_elastic_energy(linear_field(W, shape), lam=1.0, mu=1.0)
    assert energy.item() == pytest.approx(0.0, abs=1e-14)


def test_divergence_free_field_has_no_lambda_term():
    # u = curl of a stream function psi = sin(a x) sin(b y): exactly divergence-free in the
    # discrete sense when built from forward differences of psi on a staggered layout; here we
    # use u = (d_1 psi, -d_0 psi) with psi bilinear in x0 * x1 (exact under forward differences)
    x = identity_grid((10, 11), dtype=torch.float64)
    u = torch.stack([0.01 * x[0] + 0.0 * x[1], -0.01 * x[1]]).unsqueeze(0)  # div = 0.01 - 0.01
    assert Fn.linear_elastic_energy(u, lam=3.0, mu=0.0).item() == pytest.approx(0.0, abs=1e-14)
    assert Fn.linear_elastic_energy(u, lam=0.0, mu=1.0).item() > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_bending_and_curvature_vanish_on_affine_fields(shape):
    D = len(shape)
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u = linear_field(A, shape) + 3.0
    assert Fn.bending_energy(u).item() == pytest.approx(0.0, abs=1e-12)
    assert Fn.curvature_energy(u).item() == pytest.approx(0.0, abs=1e-12)


def test_bending_energy_of_quadratic_field():
    x = identity_grid((8, 9), dtype=torch.float64)
    u = torch.stack([0.5 * x[0] * x[1], torch.zeros_like(x[0])]).unsqueeze(0)
    # only d_0 d_1 u_0 = d_1 d_0 u_0 = 0.5, so the density is 2 * 0.25
    assert Fn.bending_energy(u).item() == pytest.approx(0.5, rel=1e-10)
    assert Fn.curvature_energy(u).item() == pytest.approx(0.0, abs=1e-14)


def test_diffusion_of_linear_field_and_spacing():
    A = torch.tensor([[0.1, 0.2], [0.0, -0.3]], dtype=torch.float64)
    u = linear_field(A, (6, 6))
    assert Fn.diffusion_energy(u).item() == pytest.approx((A**2).sum().item(), rel=1e-10)
    # in mm: u_mm = u * s, x_mm = x * s; isotropic spacing leaves the gradient unchanged
    assert Fn.diffusion_energy(u, spacing=2.0).item() == pytest.approx((A**2).sum().item())


def test_jacobian_penalty_counts_folding():
    A = torch.tensor([[-1.5, 0.0], [0.0, 0.0]], dtype=torch.float64)  # det(I + A) = -0.5
    u = linear_field(A, (6, 6))
    folding = Fn.jacobian_energy(u, volume_weight=0.0, folding_weight=1.0)
    assert folding.item() == pytest.approx(0.5)
    expand = linear_field(torch.eye(2, dtype=torch.float64) * 0.1, (6, 6))
    volume = Fn.jacobian_energy(expand, volume_weight=1.0, folding_weight=0.0)
    assert volume.item() == pytest.approx(torch.log(torch.tensor(1.21)).item() ** 2)


def test_regularizer_errors_are_clear():
    reg = regularizers.get("linear_elastic")()
    u = random_smooth_field((6, 6, 6))
    # the declared range is only the default training range: any physical value works
    assert torch.isfinite(reg(u, {"mu": 200.0})).all()
    with pytest.raises(ValueError, match=r"'mu'=-2.0 leaves its physical domain \[0, inf\)"):
        reg(u, {"mu": -2.0})
    with pytest.raises(KeyError, match="unknown parameter 'muu'; did you mean 'mu'"):
        reg(u, {"muu": 0.1})
    with pytest.raises(ValueError, match=r"must be a float or a tensor of shape \(2,\)"):
        reg(u, {"mu": torch.ones(3)})
    with pytest.raises(ValueError, match=r"LinearElastic\(\) 'u' must be a displacement"):
        reg(torch.zeros(2, 2, 6, 6, 6))
    with pytest.raises(KeyError, match="unknown regularizer 'elastic'"):
        regularizers.get("elastic")
    with pytest.raises(ValueError, match="must be finite"):
        reg(u, {"mu": float("nan")})


def test_curvature_sees_the_checkerboard_mode():
    """u_0 = cos(pi/2 (x_0 - x_1)) has a non-zero Laplacian; forward differences missed it."""
    x = identity_grid((32, 32), dtype=torch.float64)
    u = torch.stack([torch.cos(torch.pi / 2 * (x[0] - x[1])), torch.zeros_like(x[0])])[None]
    # centred second difference of cos(pi/2 x) along one axis: cos(pi/2 (x+1)) - 2 cos + cos(x-1)
    # = -2 cos(pi/2 x) (the neighbours cancel), so Laplacian u_0 = -4 u_0 and the density is
    # 16 cos^2, whose mean over the interior (30 x 30 points) is 16 * 0.5 = 8 exactly here
    interior = u[0, 0, 1:-1, 1:-1]
    expected = (16 * interior.pow(2)).mean().item()
    assert expected == pytest.approx(8.0, rel=1e-12)
    assert Fn.curvature_energy(u).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(7, 8), (6, 7, 8)])
def test_curvature_of_cubic_field_matches_analytic_laplacian(shape):
    x = identity_grid(shape, dtype=torch.float64)
    # u_0 = x_0^3 + x_1^2 x_0: Laplacian = 6 x_0 + 2 x_0 = 8 x_0 (centred differences are exact)
    u = torch.zeros(1, len(shape), *shape, dtype=torch.float64)
    u[0, 0] = x[0] ** 3 + x[1] ** 2 * x[0]
    interior = x[0][tuple(slice(1, -1) for _ in shape)]
    expected = (8 * interior).pow(2).mean().item()
    assert Fn.curvature_energy(u).item() == pytest.approx(expected, rel=1e-12)
    # in mm with spacing s: u_mm = s u, x_mm = s x, so Laplacian_mm u_mm = Laplacian u / s
    assert Fn.curvature_energy(u, spacing=2.0).item() == pytest.approx(expected / 4, rel=1e-12)
