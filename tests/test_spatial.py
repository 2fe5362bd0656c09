import pytest
import torch

from regzoo.spatial import (
    gradient,
    hessian,
    identity_grid,
    integrate_velocity,
    jacobian_determinant,
    resize_flow,
    warp,
)


def linear_field(A: torch.Tensor, shape, dtype=torch.float64) -> torch.Tensor:
    """u(x) = A x, as a (1, D, *shape) displacement."""
    x = identity_grid(shape, dtype=dtype)
    return torch.einsum("ij,j...->i...", A.to(dtype), x).unsqueeze(0)


@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_gradient_exact_for_linear_fields(shape):
    D = len(shape)
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jac = gradient(linear_field(A, shape))
    assert jac.shape == (1, D, D, *(n - 1 for n in shape))
    for j in range(D):
        for i in range(D):
            assert torch.allclose(jac[0, j, i], torch.full_like(jac[0, j, i], A[j, i].item()))


def test_gradient_spacing_and_hessian_of_quadratic():
    x = identity_grid((6, 7), dtype=torch.float64)
    u = torch.stack([x[0] ** 2, x[0] * x[1]]).unsqueeze(0)
    jac = gradient(u, spacing=(2.0, 1.0))
    assert torch.allclose(jac[0, 1, 1], x[0, :-1, :-1])  # d_1 (x0 x1) = x0
    h = hessian(u)
    assert h.shape == (1, 2, 2, 2, 4, 5)
    assert torch.allclose(h[0, 0, 0, 0], torch.full((4, 5), 2.0, dtype=torch.float64))
    assert torch.allclose(h[0, 1, 0, 1], torch.ones(4, 5, dtype=torch.float64))
    assert torch.allclose(h[0, 1, 1, 0], torch.ones(4, 5, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(8, 9), (6, 7, 8)])
def test_warp_integer_shift_matches_roll(shape):
    D = len(shape)
    image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    for axis in range(D):
        u = torch.zeros(1, D, *shape)
        u[:, axis] = 2.0  # fixed x samples moving x + 2 e_axis
        warped = warp(image, u)
        expected = torch.roll(image, shifts=-2, dims=2 + axis)
        inside = [slice(None)] * 2 + [slice(None)] * D
        inside[2 + axis] = slice(0, shape[axis] - 2)
        assert torch.allclose(warped[tuple(inside)], expected[tuple(inside)], atol=1e-5)


def test_warp_nearest_keeps_labels_and_rejects_bad_shapes():
    labels = torch.randint(0, 4, (1, 1, 6, 6, 6)).float()
    u = torch.full((1, 3, 6, 6, 6), 0.3)
    out = warp(labels, u, mode="nearest")
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    with pytest.raises(ValueError, match=r"warp\(\) 'u' must be a displacement"):
        warp(labels, torch.zeros(1, 2, 6, 6, 6))


@pytest.mark.parametrize("shape", [(9, 10), (6, 7, 8)])
def test_jacobian_determinant_of_linear_map(shape):
    D = len(shape)
    A = 0.2 * torch.randn(D, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    det = jacobian_determinant(linear_field(A, shape))
    assert det.shape == (1, *shape)
    expected = torch.linalg.det(torch.eye(D, dtype=torch.float64) + A)
    assert torch.allclose(det, expected.expand_as(det))


def test_integrate_velocity_of_constant_and_zero_steps():
    v = torch.zeros(1, 3, 8, 8, 8)
    v[:, 1] = 1.5
    assert torch.allclose(integrate_velocity(v, steps=5), v, atol=1e-5)
    assert torch.equal(integrate_velocity(v, steps=0), v)
    # a smooth velocity integrates to an invertible map (positive Jacobian)
    x = identity_grid((12, 12, 12))
    smooth = torch.sin(x / 12 * 3.14).unsqueeze(0) * 3.0
    assert jacobian_determinant(integrate_velocity(smooth)).min() > 0


def test_resize_flow_rescales_units():
    u = linear_field(torch.eye(2) * 0.1, (9, 9)).float()
    big = resize_flow(u, (17, 17))
    # the same physical map: u(x) = 0.1 x holds on the finer grid too
    assert torch.allclose(big, linear_field(torch.eye(2) * 0.1, (17, 17)).float(), atol=1e-5)
