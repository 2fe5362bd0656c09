"""Interop in physical space: ITK displacement transforms, oblique anisotropic grids, units."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
import torch

from regzoo.cli import main
from regzoo.io import read_displacement, write_itk_displacement
from regzoo.regularizers import functional as Fn
from regzoo.spatial import identity_grid, warp


def oblique_affine(spacing=(1.3, 0.7, 2.1), origin=(-31.0, 12.5, 40.0)) -> np.ndarray:
    """Voxel -> RAS mm with direction cosines rotated about an oblique axis."""
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    angle = math.radians(25)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture(scope="module")
def oblique_pair(tiny_phantom, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny phantom's validation pair re-headed onto an oblique, anisotropic grid."""
    folder = tmp_path_factory.mktemp("oblique")
    affine = oblique_affine()
    paths = []
    for phase in (0, 1):
        source = tiny_phantom / "imagesTr" / f"PhantomCT_0003_000{phase}.nii.gz"
        target = folder / f"oblique_{phase}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(nib.load(source).dataobj), affine), target)
        paths.append(target)
    return paths[0], paths[1]


def smooth_field(shape, amplitude=2.5, seed=0) -> torch.Tensor:
    """A smooth displacement ``(3, *shape)`` of a few voxels (sines of random phase)."""
    generator = torch.Generator().manual_seed(seed)
    x = identity_grid(shape)
    phases = torch.rand(3, 3, generator=generator) * 6.28
    return torch.stack(
        [
            amplitude * torch.sin(2 * math.pi * x[(k + 1) % 3] / shape[(k + 1) % 3] + phases[k, 0])
            * torch.cos(2 * math.pi * x[(k + 2) % 3] / shape[(k + 2) % 3] + phases[k, 1])
            for k in range(3)
        ]
    )  # fmt: skip


def inside_field_of_view(displacement: torch.Tensor, margin: float = 1.0) -> np.ndarray:
    """Voxels whose mapped point ``x + u(x)`` lies inside the moving image."""
    shape = displacement.shape[1:]
    mapped = identity_grid(shape) + displacement
    upper = torch.tensor(shape, dtype=torch.float32).view(3, 1, 1, 1) - 1 - margin
    return ((mapped >= margin) & (mapped <= upper)).all(dim=0).numpy()


def test_itk_field_reproduces_regzoo_warp_with_simpleitk(oblique_pair, tmp_path):
    fixed_path, moving_path = oblique_pair
    moving = nib.load(moving_path)
    data = torch.from_numpy(np.asarray(moving.dataobj, dtype=np.float32))
    u = smooth_field(data.shape)
    warped = warp(data[None, None], u[None])[0, 0].numpy()
    itk_path = write_itk_displacement(u, moving.affine, tmp_path / "displacement_itk.nii.gz")

    field = sitk.ReadImage(str(itk_path), sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    resampled = sitk.Resample(
        sitk.ReadImage(str(moving_path), sitk.sitkFloat32),
        sitk.ReadImage(str(fixed_path), sitk.sitkFloat32),
        transform,
        sitk.sitkLinear,
        0.0,
    )
    by_itk = np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))  # z,y,x -> x,y,z
    inside = inside_field_of_view(u)
    assert inside.mean() > 0.5
    value_range = data.max() - data.min()
    difference = np.abs(by_itk - warped)[inside].max()
    assert difference < 0.01 * value_range, difference


def test_itk_field_reproduces_regzoo_warp_with_ants(oblique_pair, tmp_path):
    ants = pytest.importorskip("ants", reason="antspyx is in the bench extra")
    fixed_path, moving_path = oblique_pair
    moving = nib.load(moving_path)
    data = torch.from_numpy(np.asarray(moving.dataobj, dtype=np.float32))
    u = smooth_field(data.shape, seed=1)
    warped = warp(data[None, None], u[None])[0, 0].numpy()
    itk_path = write_itk_displacement(u, moving.affine, tmp_path / "displacement_itk.nii.gz")
    result = ants.apply_transforms(
        fixed=ants.image_read(str(fixed_path)),
        moving=ants.image_read(str(moving_path)),
        transformlist=[str(itk_path)],
        interpolator="linear",
    ).numpy()
    inside = inside_field_of_view(u)
    difference = np.abs(result - warped)[inside].max()
    assert difference < 0.01 * (data.max() - data.min()), difference


def test_register_writes_an_itk_field_that_reads_back_as_its_voxels(
    tiny_checkpoint, oblique_pair, tmp_path, capsys
):
    fixed, moving = oblique_pair
    out = tmp_path / "reg"
    args = ["register", "--model", str(tiny_checkpoint), "--fixed", str(fixed), "--moving"]
    # the phantom re-headed to ~1 mm voxels is 5x3x7 voxels at the tiny model's 10.5 mm
    # training spacing: the network runs on the image's own grid (the field's units are tested)
    extra = ["--native-grid", "--refine", "3"]
    assert main([*args, str(moving), *extra, "--out", str(out)]) == 0
    capsys.readouterr()
    voxels = read_displacement(out / "disp.nii.gz").data
    itk = nib.load(out / "displacement_itk.nii.gz")
    assert itk.shape == (32, 32, 32, 1, 3) and itk.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(itk.affine, nib.load(fixed).affine, atol=1e-5)
    np.testing.assert_allclose(
        read_displacement(out / "displacement_itk.nii.gz").data, voxels, atol=1e-4
    )


def test_evaluate_reads_itk_fields_by_content(tiny_phantom, tmp_path, capsys):
    learn2reg, itk = tmp_path / "l2r", tmp_path / "itk"
    learn2reg.mkdir()
    itk.mkdir()
    for path in (tiny_phantom / "gtdispTr").glob("*.nii.gz"):
        case = path.name.split("_")[1].split(".")[0]
        name = f"disp_{case}_{case}.nii.gz"
        shutil.copy(path, learn2reg / name)
        field = read_displacement(path)
        write_itk_displacement(field.data, field.affine, itk / name)  # as ANTs would write it
    scores = []
    for folder in (learn2reg, itk):
        report = tmp_path / f"{folder.name}.json"
        args = ["evaluate", "--data", str(tiny_phantom), "--disp-dir", str(folder)]
        assert main([*args, "--out", str(report)]) == 0
        scores.append(report.read_text())
    capsys.readouterr()

    first, second = (json.loads(s)["mean"] for s in scores)
    for metric in ("tre_mm", "dice", "sdlogj"):
        assert second[metric] == pytest.approx(first[metric], rel=1e-4, abs=1e-6)


def test_energies_on_anisotropic_data_equal_the_isotropic_energies_of_the_same_field():
    # one physical field u(p) = A p (mm), sampled on a 1 mm grid and on a (2, 0.5, 1) mm grid
    A = torch.tensor(
        [[0.02, -0.01, 0.03], [0.01, 0.04, 0.0], [-0.02, 0.01, 0.05]], dtype=torch.float64
    )
    spacing = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)

    def sampled(step: torch.Tensor, shape) -> torch.Tensor:
        p = identity_grid(shape, dtype=torch.float64) * step.view(3, 1, 1, 1)  # mm
        u_mm = torch.einsum("ij,j...->i...", A, p)
        return (u_mm / step.view(3, 1, 1, 1))[None]  # voxels of that grid

    iso = sampled(torch.ones(3, dtype=torch.float64), (8, 8, 8))
    aniso = sampled(spacing, (4, 16, 8))
    for energy, kwargs in (
        (Fn.diffusion_energy, {}),
        (Fn.linear_elastic_energy, {"lam": 0.3, "mu": 1.7}),
        (Fn.total_variation_energy, {"eps": 0.01}),
    ):
        expected = energy(iso, spacing=None, **kwargs)
        assert energy(aniso, spacing=spacing, **kwargs).item() == pytest.approx(
            expected.item(), rel=1e-10
        )
        # in voxel units the anisotropic grid gives another (wrong) value
        assert energy(aniso, **kwargs).item() != pytest.approx(expected.item(), rel=1e-3)
