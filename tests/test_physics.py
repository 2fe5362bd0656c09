"""Analytic checks (float64, 2D and 3D) of the zoo beyond linear elasticity (issue 24):
hyperelastic, St Venant-Kirchhoff, Neo-Hookean, rigidity and sliding."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from regzoo import regularizers
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.config import PerLabel, TermConfig, load_config
from regzoo.regularizers import functional as Fn
from regzoo.resolve import build_term
from regzoo.spatial import identity_grid
from regzoo.testing import random_smooth_field
from regzoo.training import train

ROOT = Path(__file__).resolve().parents[1]

SHAPES = [(9, 8), (6, 7, 5)]
NEW = ["hyperelastic", "st_venant_kirchhoff", "neo_hookean", "rigidity", "sliding"]


def linear_field(A, shape, shift=0.0):
    """``u(x) = A x + shift`` ``(1, D, *shape)``."""
    x = identity_grid(shape, dtype=torch.float64)
    return (torch.einsum("ij,j...->i...", A, x) + shift).unsqueeze(0)


def at(*index: int | slice) -> tuple[int | slice, ...]:
    """A tensor index of integers and slices (typed as such)."""
    return index


def rotation(theta, ndim):
    R = torch.eye(ndim, dtype=torch.float64)
    c, s = math.cos(theta), math.sin(theta)
    R[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return R


def rigid_field(shape, degrees=30.0):
    """``x -> R x + t`` as a displacement ``(R - I) x + t``."""
    ndim = len(shape)
    R = rotation(math.radians(degrees), ndim)
    return linear_field(R - torch.eye(ndim, dtype=torch.float64), shape, 1.7)


def test_the_new_regularizers_are_registered_and_declared():
    # their contract and property checks run with every registered regularizer's
    # (tests/test_regularizers.py, tests/test_properties.py)
    assert set(NEW) <= set(regularizers.available())
    assert {n for n in NEW if regularizers.get(n).quadratic} == {"sliding"}
    assert all(regularizers.get(n).spatial_params for n in NEW)


# --- hyperelastic ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_hyperelastic_translation_costs_nothing(shape):
    u = torch.ones(1, len(shape), *shape, dtype=torch.float64) * torch.tensor(
        [1.5, -2.0, 0.3][: len(shape)], dtype=torch.float64
    ).view(1, -1, *[1] * len(shape))
    assert Fn.hyperelastic_energy(u, 2.0, 3.0, 4.0).item() == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_hyperelastic_area_and_volume_vanish_for_rotations(shape):
    u = rigid_field(shape)
    ndim = len(shape)
    surface_and_volume = Fn.hyperelastic_energy(u, length=0.0, area=1.0, volume=1.0)
    assert surface_and_volume.item() == pytest.approx(0.0, abs=1e-13)
    # the length term is FAIR's quadratic |grad u|^2 / 2: a rotation pays it
    R = rotation(math.radians(30), ndim) - torch.eye(ndim, dtype=torch.float64)
    length = Fn.hyperelastic_energy(u, length=1.0, area=0.0, volume=0.0)
    assert length.item() == pytest.approx(0.5 * (R**2).sum().item(), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_hyperelastic_volume_term_blows_up_as_det_goes_to_zero(shape):
    ndim = len(shape)
    energies = []
    for s in (1e-1, 1e-2, 1e-3, 1e-4):
        A = torch.zeros(ndim, ndim, dtype=torch.float64)
        A[0, 0] = s - 1  # F = diag(s, 1, 1): det F = s, faces unchanged but one
        energy = Fn.hyperelastic_energy(linear_field(A, shape), 0.0, 0.0, 1.0, min_det=1e-9)
        assert energy.item() == pytest.approx(((s - 1) ** 2 / s) ** 2, rel=1e-10)
        energies.append(energy.item())
    assert energies[-1] > 1e7
    assert all(b > 50 * a for a, b in itertools.pairwise(energies))


def test_hyperelastic_continues_the_barrier_into_folding():
    # det F = -0.5: finite, larger than at det F = min_det, and the gradient unfolds
    A = torch.zeros(2, 2, dtype=torch.float64)
    A[0, 0] = -1.5
    u = linear_field(A, (6, 6)).requires_grad_(True)
    energy = Fn.hyperelastic_energy(u, 0.0, 0.0, 1.0, min_det=0.1)
    psi = ((0.1 - 1) ** 2 / 0.1) ** 2
    slope = 2 * (0.1 - 1) ** 3 * (0.1 + 1) / 0.1**3
    assert energy.item() == pytest.approx(psi + slope * (-0.5 - 0.1), rel=1e-12)
    (grad,) = torch.autograd.grad(energy, u)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_hyperelastic_hand_computed_affine_values():
    # 2D: F = diag(1.2, 0.9); cof F = diag(0.9, 1.2); det F = 1.08
    A = torch.diag(torch.tensor([0.2, -0.1], dtype=torch.float64))
    length = 0.5 * (0.2**2 + 0.1**2)
    area = 0.5 * ((0.9**2 - 1) ** 2 + (1.2**2 - 1) ** 2)
    volume = ((1.08 - 1) ** 2 / 1.08) ** 2
    energy = Fn.hyperelastic_energy(linear_field(A, (7, 6)), 0.5, 2.0, 3.0)
    assert energy.item() == pytest.approx(0.5 * length + 2.0 * area + 3.0 * volume, rel=1e-12)
    # 3D: F = diag(1.2, 0.9, 1.1); cof F = diag(0.99, 1.32, 1.08); det F = 1.188
    A = torch.diag(torch.tensor([0.2, -0.1, 0.1], dtype=torch.float64))
    length = 0.5 * (0.04 + 0.01 + 0.01)
    area = 0.5 * ((0.99**2 - 1) ** 2 + (1.32**2 - 1) ** 2 + (1.08**2 - 1) ** 2)
    volume = ((1.188 - 1) ** 2 / 1.188) ** 2
    energy = Fn.hyperelastic_energy(linear_field(A, (5, 6, 4)), 0.5, 2.0, 3.0)
    assert energy.item() == pytest.approx(0.5 * length + 2.0 * area + 3.0 * volume, rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_hyperelastic_general_affine_matches_linear_algebra(shape):
    ndim = len(shape)
    A = 0.2 * torch.randn(
        ndim, ndim, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    F = torch.eye(ndim, dtype=torch.float64) + A
    cof = torch.linalg.det(F) * torch.linalg.inv(F).T
    det = torch.linalg.det(F)
    expected = (
        0.7 * 0.5 * (A**2).sum()
        + 1.3 * 0.5 * ((cof**2).sum(dim=0) - 1).pow(2).sum()
        + 0.4 * ((det - 1) ** 2 / det) ** 2
    )
    energy = Fn.hyperelastic_energy(linear_field(A, shape), 0.7, 1.3, 0.4)
    assert energy.item() == pytest.approx(expected.item(), rel=1e-10)


def test_hyperelastic_is_per_millimetre_with_spacing():
    # the physical field u_mm = A_mm x_mm sampled on an anisotropic grid: F = I + A_mm
    A = torch.tensor([[0.1, 0.2], [-0.05, 0.3]], dtype=torch.float64)
    h = torch.tensor([2.0, 0.5], dtype=torch.float64)
    voxels = torch.diag(1 / h) @ A @ torch.diag(h)  # u_vox = diag(1/h) A_mm diag(h) x_vox
    anisotropic = Fn.hyperelastic_energy(linear_field(voxels, (6, 7)), 1.0, 1.0, 1.0, [2.0, 0.5])
    isotropic = Fn.hyperelastic_energy(linear_field(A, (6, 7)), 1.0, 1.0, 1.0)
    assert anisotropic.item() == pytest.approx(isotropic.item(), rel=1e-12)


# --- St Venant-Kirchhoff and Neo-Hookean -----------------------------------------------------


@pytest.mark.parametrize("shape", [(10, 11), (7, 8, 9)])
@pytest.mark.parametrize("energy", [Fn.st_venant_kirchhoff_energy, Fn.neo_hookean_energy])
def test_large_strain_elasticity_reduces_to_linear_elasticity(shape, energy):
    u = random_smooth_field(shape, dtype=torch.float64, amplitude=1.0)
    for scale in (1e-2, 1e-3, 1e-4):
        ratio = energy(scale * u, 0.4, 0.2) / Fn.linear_elastic_energy(scale * u, 0.4, 0.2)
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=20 * scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("energy", [Fn.st_venant_kirchhoff_energy, Fn.neo_hookean_energy])
def test_large_strain_elasticity_is_invariant_to_finite_rotations(shape, energy):
    u = rigid_field(shape)
    assert energy(u, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    assert Fn.linear_elastic_energy(u, 1.0, 1.0).item() > 0.05


def test_st_venant_kirchhoff_hand_computed_value():
    # F = diag(1.2, 0.9, 1.1): E = diag(0.22, -0.095, 0.105)
    A = torch.diag(torch.tensor([0.2, -0.1, 0.1], dtype=torch.float64))
    E = torch.tensor([0.22, -0.095, 0.105], dtype=torch.float64)
    expected = 0.3 / 2 * E.sum() ** 2 + 0.7 * (E**2).sum()
    energy = Fn.st_venant_kirchhoff_energy(linear_field(A, (5, 6, 4)), 0.3, 0.7)
    assert energy.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_neo_hookean_hand_computed_value_and_compression_barrier(shape):
    ndim = len(shape)
    values = []
    for s in (0.5, 1e-1, 1e-2, 1e-3):
        A = torch.zeros(ndim, ndim, dtype=torch.float64)
        A[0, 0] = s - 1  # F = diag(s, 1, 1)
        energy = Fn.neo_hookean_energy(linear_field(A, shape), 0.3, 0.7, min_det=1e-6)
        log = math.log(s)
        expected = 0.7 / 2 * (s**2 - 1) - 0.7 * log + 0.3 / 2 * log**2
        assert energy.item() == pytest.approx(expected, rel=1e-12)
        values.append(energy.item())
    assert values == sorted(values) and values[-1] > 5


# --- rigidity --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_rigidity_vanishes_for_a_rigid_motion(shape):
    energy = Fn.rigidity_energy(rigid_field(shape), 2.0, 1.0, 3.0, 4.0, spacing=None)
    assert energy.item() == pytest.approx(0.0, abs=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
def test_rigidity_of_a_shear_and_a_bend(shape):
    ndim, gamma = len(shape), 0.3
    A = torch.zeros(ndim, ndim, dtype=torch.float64)
    A[0, 1] = gamma  # u_0 = gamma x_1: det F = 1, F^T F - I = [[0, g], [g, g^2]]
    shear = Fn.rigidity_energy(linear_field(A, shape), 2.0, 1.0, 1.0, 1.0)
    # elastix counts the off-diagonal pair (F^T F)_01 once: OC = g^2 + g^4
    assert shear.item() == pytest.approx(2.0 * (gamma**2 + gamma**4), rel=1e-12)
    x = identity_grid(shape, dtype=torch.float64)
    bend = torch.zeros(1, ndim, *shape, dtype=torch.float64)
    bend[0, 0] = 0.01 * x[1] ** 2  # d_1 d_1 u_0 = 0.02
    linearity = Fn.rigidity_energy(bend, 1.0, 5.0, 0.0, 0.0)
    assert linearity.item() == pytest.approx(5.0 * 0.02**2, rel=1e-10)


def elastix_rigidity(u, c, wl=1.0, wo=1.0, wp=1.0):
    """elastix's ``TransformRigidityPenaltyTerm::GetValue`` expanded by hand (2D and 3D), on
    forward differences of a dense field ``u (1, D, *s)`` with coefficients ``c (*s)``: each
    condition is ``sum_x c(x) condition(x) / sum_x c(x)`` over the points where it is defined,
    and the total is scaled by ``max c`` (regzoo's one departure, for a tunable scale)."""
    ndim = u.shape[1]
    s = u.shape[2:]

    def at(t, shift):  # the (s - 1) interior window moved by ``shift``
        return t[tuple(slice(shift[a], shift[a] + s[a] - 1) for a in range(ndim))]

    def d(k, axis):  # mu_{k+1}_{A,B,C}: derivative of component k along ``axis``
        e = [0] * ndim
        e[axis] = 1
        return at(u[0, k], e) - at(u[0, k], [0] * ndim)

    zero = [0] * ndim
    if ndim == 2:
        mu1A, mu2A, mu1B, mu2B = d(0, 0), d(1, 0), d(0, 1), d(1, 1)
        oc = (
            ((1 + mu1A) * (1 + mu1A) + mu2A * mu2A - 1) ** 2
            + (mu1B * mu1B + (1 + mu2B) * (1 + mu2B) - 1) ** 2
            + ((1 + mu1A) * mu1B + mu2A * (1 + mu2B)) ** 2
        )
        pc = ((1 + mu1A) * (1 + mu2B) - mu2A * mu1B - 1) ** 2
    else:
        mu1A, mu2A, mu3A = d(0, 0), d(1, 0), d(2, 0)
        mu1B, mu2B, mu3B = d(0, 1), d(1, 1), d(2, 1)
        mu1C, mu2C, mu3C = d(0, 2), d(1, 2), d(2, 2)
        oc = (
            ((1 + mu1A) * (1 + mu1A) + mu2A * mu2A + mu3A * mu3A - 1) ** 2
            + ((1 + mu1A) * mu1B + mu2A * (1 + mu2B) + mu3A * mu3B) ** 2
            + ((1 + mu1A) * mu1C + mu2A * mu2C + mu3A * (1 + mu3C)) ** 2
            + (mu1B * mu1B + (1 + mu2B) * (1 + mu2B) + mu3B * mu3B - 1) ** 2
            + (mu1B * mu1C + (1 + mu2B) * mu2C + mu3B * (1 + mu3C)) ** 2
            + (mu1C * mu1C + mu2C * mu2C + (1 + mu3C) * (1 + mu3C) - 1) ** 2
        )
        pc = (
            -mu1C * (1 + mu2B) * mu3A
            + mu1B * mu2C * mu3A
            + mu1C * mu2A * mu3B
            - (1 + mu1A) * mu2C * mu3B
            - mu1B * mu2A * (1 + mu3C)
            + (1 + mu1A) * (1 + mu2B) * (1 + mu3C)
            - 1
        ) ** 2

    def at2(t, shift):  # the (s - 2) interior window moved by ``shift``
        return t[tuple(slice(shift[a], shift[a] + s[a] - 2) for a in range(ndim))]

    lc = torch.zeros(tuple(n - 2 for n in s), dtype=u.dtype)
    for k in range(ndim):  # D, E, G (and F, H, I in 3D): every d_a d_b u_k with a <= b
        for a in range(ndim):
            for b in range(a, ndim):
                ea = [int(i == a) for i in range(ndim)]
                eb = [int(i == b) for i in range(ndim)]
                eab = [x + y for x, y in zip(ea, eb, strict=True)]
                h = at2(u[0, k], eab) - at2(u[0, k], ea) - at2(u[0, k], eb) + at2(u[0, k], zero)
                lc = lc + h * h
    c1, c2 = at(c, zero), at2(c, zero)
    return float(c.max()) * (
        wl * (c2 * lc).sum() / c2.sum()
        + wo * (c1 * oc).sum() / c1.sum()
        + wp * (c1 * pc).sum() / c1.sum()
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_rigidity_matches_elastix_term_by_term_on_a_shear(shape):
    ndim, gamma = len(shape), 0.3
    A = torch.zeros(ndim, ndim, dtype=torch.float64)
    A[0, 1] = gamma
    u = linear_field(A, shape)
    uniform = torch.ones(shape, dtype=torch.float64)
    expected = elastix_rigidity(u, uniform, 1.0, 1.5, 2.0)
    assert expected.item() == pytest.approx(1.5 * (gamma**2 + gamma**4), rel=1e-12)
    assert Fn.rigidity_energy(u, 1.0, 1.0, 1.5, 2.0).item() == pytest.approx(expected.item())
    # a mask over a small part of the grid: the same mean over the rigid region (elastix's
    # normalisation by the coefficients' sum), not the domain mean scaled by the mask's share
    mask = torch.zeros(1, 1, *shape, dtype=torch.float64)
    mask[at(0, 0, *(slice(1, 3) for _ in shape))] = 1.0
    assert mask.mean().item() < 0.15
    masked = Fn.rigidity_energy(u, mask, 1.0, 1.5, 2.0)
    assert masked.item() == pytest.approx(expected.item(), rel=1e-12)
    # the coefficients' scale multiplies the term (a stiffness the hypernetwork tunes)
    doubled = Fn.rigidity_energy(u, 2 * mask, 1.0, 1.5, 2.0)
    assert doubled.item() == pytest.approx(2 * expected.item(), rel=1e-12)


@pytest.mark.parametrize("shape", [(12, 11), (9, 10, 8)])
def test_rigidity_matches_elastix_term_by_term_on_a_masked_field(shape):
    torch.manual_seed(0)
    u = random_smooth_field(shape, batch=1, dtype=torch.float64, amplitude=2.0)
    x = identity_grid(shape, dtype=torch.float64)
    u[0, 0] += 0.02 * x[1] ** 2 + 0.1 * x[0] * x[-1] / shape[0]  # bending and shear
    mask = torch.zeros(shape, dtype=torch.float64)
    mask[tuple(slice(2, 6) for _ in shape)] = 1.0
    mask[tuple(slice(3, 5) for _ in shape)] = 0.5  # a graded coefficient image
    expected = elastix_rigidity(u, mask, 0.7, 1.3, 2.1)
    energy = Fn.rigidity_energy(u, mask[None, None], 0.7, 1.3, 2.1)
    assert energy.item() == pytest.approx(expected.item(), rel=1e-12)
    assert energy.item() > 1e-3
    # no rigid coefficient anywhere: zero, as elastix's early exit
    nothing = Fn.rigidity_energy(u, torch.zeros(1, 1, *shape, dtype=torch.float64))
    assert nothing.item() == 0.0
    # the gradient flows through the map and the field
    field = u.clone().requires_grad_(True)
    Fn.rigidity_energy(field, mask[None, None]).backward()
    assert field.grad is not None and bool(field.grad.isfinite().all())


@pytest.mark.parametrize("shape", [(12, 11), (9, 10, 8)])
def test_rigidity_on_a_labelled_region(shape):
    # rigid inside a box (and the two voxels its differences reach), smooth noise elsewhere
    box = tuple(slice(2, 5) for _ in shape)
    reach = tuple(slice(2, 7) for _ in shape)
    mask = torch.zeros(1, 1, *shape, dtype=torch.float64)
    mask[at(0, 0, *box)] = 1.0
    u = random_smooth_field(shape, batch=1, dtype=torch.float64, amplitude=2.0)
    u[at(0, slice(None), *reach)] = rigid_field(shape)[at(0, slice(None), *reach)]
    assert Fn.rigidity_energy(u, mask).item() == pytest.approx(0.0, abs=1e-13)
    assert Fn.rigidity_energy(u, 1.0).item() > 1e-2  # the whole domain is not rigid
    sheared = u.clone()
    sheared[at(0, 0, *reach)] += 0.2 * identity_grid(shape, dtype=torch.float64)[at(1, *reach)]
    assert Fn.rigidity_energy(sheared, mask).item() > 1e-3
    # the same through the per-label path of a config: bone = label 3
    labels = 3 * mask.long()
    term = build_term(
        TermConfig(
            name="rigidity",
            params={"rigidity": PerLabel(per_label={"bone": 1.0}, background=0.0)},
        ),
        labels={"bone": 3},
    )
    assert [k for k, s in term.specs.items() if not s.is_fixed] == [
        "linearity",
        "orthonormality",
        "properness",
    ]
    like = torch.ones(1, 1, dtype=torch.float64)
    bone = term.maps["rigidity"].build({"rigidity@bone": 1.0}, labels, like)
    assert torch.equal(bone, mask)
    assert term.regularizer(u, {"rigidity": bone}).item() == pytest.approx(0.0, abs=1e-13)


# --- sliding ---------------------------------------------------------------------------------


def step_fields(shape, axis, component, c=0.7, k=3):
    """A region map that changes across the plane ``x_axis = k + 1/2`` and a displacement whose
    channel ``component`` jumps by ``c`` across it."""
    x = identity_grid(shape, dtype=torch.float64)
    inside = (x[axis] > k).to(torch.float64)
    u = torch.zeros(1, len(shape), *shape, dtype=torch.float64)
    u[0, component] = c * inside
    return u, inside[None, None]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [0, 1])
def test_sliding_is_free_along_a_planar_interface(shape, axis):
    ndim, c = len(shape), 0.7
    for component in range(ndim):
        u, region = step_fields(shape, axis, component, c)
        energy = Fn.sliding_energy(u, region, slip=1.0)
        diffusion = Fn.diffusion_energy(u)
        if component == axis:  # a normal jump: a gap opens, it pays c^2 per crossing difference
            assert energy.item() == pytest.approx(c**2 / (shape[axis] - 1), rel=1e-12)
            assert energy.item() == pytest.approx(diffusion.item(), rel=1e-12)
        else:  # a tangential jump: the organs slide, for free
            assert energy.item() == pytest.approx(0.0, abs=1e-14)
            half = Fn.sliding_energy(u, region, slip=0.5)
            assert half.item() == pytest.approx(0.5 * diffusion.item(), rel=1e-12)
        assert Fn.sliding_energy(u, region, slip=0.0).item() == pytest.approx(diffusion.item())


def test_sliding_is_diffusion_without_an_interface_and_per_millimetre():
    u = random_smooth_field((7, 8, 6), dtype=torch.float64)
    spacing = [2.0, 1.0, 0.5]
    assert torch.equal(Fn.sliding_energy(u, 1.0, 1.0, spacing), Fn.diffusion_energy(u, spacing))
    tangential, region = step_fields((7, 8, 6), 0, 2)
    assert Fn.sliding_energy(tangential, region, 1.0, spacing).item() == pytest.approx(0, abs=1e-14)
    normal, _ = step_fields((7, 8, 6), 0, 0, c=0.7)
    # the jump is 0.7 voxels = 1.4 mm over a 2 mm step
    assert Fn.sliding_energy(normal, region, 1.0, spacing).item() == pytest.approx(0.49 / 6)


def test_sliding_through_the_label_path_of_a_config():
    u, inside = step_fields((8, 7, 6), 0, 1)
    labels = inside.long()  # lung = 1
    term = build_term(
        TermConfig(
            name="sliding",
            params={"region": PerLabel(per_label={"lung": 1.0}, background=0.0)},
        ),
        labels={"lung": 1},
    )
    assert [k for k, s in term.specs.items() if not s.is_fixed] == ["slip"]
    like = torch.ones(1, 1, dtype=torch.float64)
    region = term.maps["region"].build({"region@lung": 1.0}, labels, like)
    assert term.regularizer(u, {"region": region}).item() == pytest.approx(0.0, abs=1e-14)
    assert term.regularizer(u, {"region": 1.0}).item() > 0  # no interface: diffusion


def test_sliding_normals_follow_an_oblique_interface():
    x = identity_grid((16, 16), dtype=torch.float64)
    region = ((x[0] + x[1]) > 15).to(torch.float64)[None, None]
    n0, n1 = Fn.interface_normals(region, sigma=1.0)
    at = (0, 7, 8)
    assert n0[at].item() == pytest.approx(n1[at].item(), rel=1e-9)
    assert n0[at].item() == pytest.approx(1 / math.sqrt(2), rel=1e-9)


# --- listing and configs ---------------------------------------------------------------------


def test_regularizers_lists_each_with_its_parameter_space(capsys):
    assert main(["regularizers", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    expected = {
        "hyperelastic": ["length", "area", "volume"],
        "st_venant_kirchhoff": ["lam", "mu"],
        "neo_hookean": ["lam", "mu"],
        "rigidity": ["rigidity", "linearity", "orthonormality", "properness"],
        "sliding": ["region", "slip"],
    }
    for name, params in expected.items():
        assert [p["name"] for p in entries[name]["params"]] == params
    scales = {p["name"]: p["scale"] for p in entries["hyperelastic"]["params"]}
    assert set(scales.values()) == {"log"}  # stiffnesses on a log scale


CONFIGS = {
    "phantom_hyperelastic": ["length", "area", "volume"],
    "phantom_st_venant_kirchhoff": ["lam", "mu"],
    "phantom_neo_hookean": ["lam", "mu"],
    "phantom_tissue_rigidity": ["lam", "mu", "rigidity@bone"],
    "phantom_tissue_sliding": ["slip", "alpha"],
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_config_trains_three_steps(name, tiny_phantom, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_phantom, run_dir, steps=3)
    checkpoint = train(load_config(ROOT / "configs" / f"{name}.yaml", overrides))
    model = load_model(checkpoint)
    assert [n.split(".", 1)[1] for n in model.space.names] == CONFIGS[name]
