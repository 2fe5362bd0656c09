"""The fused finite-difference energies against their textbook forms (stacked gradient/Hessian)."""

import pytest
import torch

from regzoo.regularizers import functional
from regzoo.spatial import differences, gradient, hessian, jacobian_determinant, partials

SHAPES = [(2, 3, 7, 8, 9), (2, 2, 9, 10)]


def _physical(u, spacing):
    if spacing is None:
        return u
    return u * torch.tensor(spacing, dtype=u.dtype).view(1, -1, *([1] * (u.ndim - 2)))


def textbook(name, u, spacing, **params):
    """The energies as written in their docstrings, on the stacked gradient and Hessian."""
    v = _physical(u, spacing)
    if name == "diffusion":
        return gradient(v, spacing).pow(2).sum(dim=(1, 2)).flatten(1).mean(1)
    if name == "linear_elastic":
        jac = gradient(v, spacing)
        shear = (jac + jac.transpose(1, 2)).pow(2).sum(dim=(1, 2))
        div = torch.diagonal(jac, dim1=1, dim2=2).sum(dim=-1)
        lam = params["lam"].view(-1, *[1] * (div.ndim - 1))  # per sample
        density = params["mu"] / 4 * shear + lam / 2 * div.pow(2)
        return density.flatten(1).mean(1)
    if name == "bending":
        return hessian(v, spacing).pow(2).sum(dim=(1, 2, 3)).flatten(1).mean(1)
    if name == "curvature":
        laplacian = torch.diagonal(hessian(v, spacing), dim1=2, dim2=3).sum(dim=-1)
        return laplacian.pow(2).sum(dim=1).flatten(1).mean(1)
    if name == "total_variation":
        squared = gradient(v, spacing).pow(2).sum(dim=(1, 2))
        return (torch.sqrt(squared + params["eps"] ** 2) - params["eps"]).flatten(1).mean(1)
    raise KeyError(name)


FUSED = {
    "diffusion": lambda u, s: functional.diffusion_energy(u, s),
    "linear_elastic": lambda u, s: functional.linear_elastic_energy(
        u, torch.tensor([0.3, 4.0], dtype=u.dtype), 0.7, s
    ),
    "bending": lambda u, s: functional.bending_energy(u, s),
    "curvature": lambda u, s: functional.curvature_energy(u, s),
    "total_variation": lambda u, s: functional.total_variation_energy(u, 0.01, s),
}
PARAMS = {"lam": torch.tensor([0.3, 4.0], dtype=torch.float64), "mu": 0.7, "eps": 0.01}


@pytest.mark.parametrize("shape", SHAPES, ids=["3d", "2d"])
@pytest.mark.parametrize("with_spacing", [False, True], ids=["voxels", "mm"])
@pytest.mark.parametrize("name", list(FUSED))
def test_fused_energy_equals_textbook_form(name, shape, with_spacing):
    torch.manual_seed(0)
    u = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    spacing = (0.7, 1.3, 2.0)[: shape[1]] if with_spacing else None
    fused, reference = FUSED[name](u, spacing), textbook(name, u, spacing, **PARAMS)
    assert torch.allclose(fused, reference, rtol=1e-12, atol=0)
    (g_fused,) = torch.autograd.grad(fused.sum(), u)
    (g_reference,) = torch.autograd.grad(reference.sum(), u)
    assert torch.allclose(g_fused, g_reference, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES, ids=["3d", "2d"])
def test_differences_and_partials_are_the_gradient(shape):
    u = torch.randn(*shape, dtype=torch.float64)
    spacing = (0.5, 2.0, 3.0)[: shape[1]]
    jac = gradient(u, spacing)
    for i, d in enumerate(differences(u, spacing)):
        assert torch.equal(d, jac[:, :, i])
    assert torch.equal(differences(u, spacing, axes=[1])[0], jac[:, :, 1])
    for j, row in enumerate(partials(u, spacing)):
        for i, entry in enumerate(row):
            assert torch.equal(entry, jac[:, j, i])
    eye = torch.eye(shape[1], dtype=u.dtype).view(1, shape[1], shape[1], *[1] * (u.ndim - 2))
    det = torch.linalg.det((gradient(u) + eye).movedim(1, -1).movedim(1, -1))
    assert torch.allclose(jacobian_determinant(u, pad=False), det, rtol=1e-10, atol=1e-12)


def test_hand_written_adjoint_has_first_and_second_derivatives():
    u = torch.randn(1, 3, 4, 5, 3, dtype=torch.float64, requires_grad=True)

    def flat(x):
        return torch.cat([p.flatten() for row in partials(x) for p in row])

    assert torch.autograd.gradcheck(flat, (u,))
    assert torch.autograd.gradgradcheck(flat, (u,))
    assert torch.autograd.gradgradcheck(lambda x: functional.bending_energy(x), (u,))
