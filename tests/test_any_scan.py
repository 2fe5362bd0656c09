"""Any scan: no autograd in network-only passes, the network at its training spacing,
pre-alignment and intensity normalisations (issue 30)."""

import json
import logging
import math
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the conventional alias)
import torch
import torch.nn.functional as F
from conftest import QUICKSTART, tiny_overrides
from test_inference_cli import pair_paths, register_args, sweep_args
from test_interop import inside_field_of_view

from regzoo._errors import InputError
from regzoo.align import _field, _voxel_matrix, align, compose
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.config import ConfigError, load_config
from regzoo.data.learn2reg import Intensity, load_keypoints, normalize_intensity
from regzoo.inference import register, save_result
from regzoo.io import Volume, read_volume
from regzoo.metrics import target_registration_error
from regzoo.nets import RegistrationOutput
from regzoo.refinement import RefineOptions
from regzoo.registration_model import RegistrationModel, TrainingGrid
from regzoo.similarity import parse_similarity
from regzoo.spatial import warp


def _run_quietly(args, capsys) -> tuple[int, str]:
    """Run a command recording every warning; returns its exit code and what it printed to
    stderr together with the warnings' messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(args)
    err = capsys.readouterr().err
    return code, err + "\n".join(str(w.message) for w in caught)


def test_no_command_warns_about_requires_grad(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    fixed, moving, _ = pair_paths(tiny_phantom)
    commands = [
        sweep_args(tiny_checkpoint, tiny_phantom, tmp_path / "sweep", "--grid", "mu=0.01:1:3"),
        [
            "evaluate",
            "--data",
            str(tiny_phantom),
            "--model",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "eval.json"),
        ],
        register_args(tiny_checkpoint, fixed, moving, tmp_path / "reg"),
        [*register_args(tiny_checkpoint, fixed, moving, tmp_path / "reg2"), "--refine", "2"],
    ]
    for args in commands:
        code, err = _run_quietly(args, capsys)
        assert code == 0, err
        assert "requires_grad" not in err, (args[0], err)


# -- the network at its training spacing ----------------------------------------------------


class ConstantNet(torch.nn.Module):
    """A stand-in network: a constant displacement (voxels of the grid it sees)."""

    num_params = 0
    multiple = 4

    def __init__(self, voxels: Sequence[float]) -> None:
        super().__init__()
        self.voxels = torch.tensor(voxels, dtype=torch.float32)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, fixed, moving, unit=None) -> RegistrationOutput:
        self.seen.append(tuple(fixed.shape[2:]))
        shape = (fixed.shape[0], len(self.voxels), *fixed.shape[2:])
        field = self.voxels.view(1, -1, *[1] * (len(shape) - 2)).expand(shape).clone()
        return RegistrationOutput(displacement=field)


def _constant_model(ndim: int, training_spacing: float) -> tuple[RegistrationModel, ConstantNet]:
    shape = "[" + ", ".join(["32"] * ndim) + "]"
    config = load_config(QUICKSTART, [f"model.ndim={ndim}", f"data.phantom.shape={shape}"])
    model = RegistrationModel(config)
    net = ConstantNet([3.0] * ndim)
    model.net = net  # type: ignore[assignment]
    model.training_grid = TrainingGrid((training_spacing,) * ndim, (16,) * ndim)
    return model, net


@pytest.mark.parametrize(
    ("spacing", "expected_size", "expected_voxels"),
    [
        ((1.0, 1.0), (17, 17), (6.0, 6.0)),
        ((1.0, 2.0, 0.5), (17, 33, 9), (6.0, 3.0, 12.0)),
    ],
)
def test_a_constant_translation_in_mm_survives_the_round_trip(
    spacing, expected_size, expected_voxels
):
    """The network sees the image at its training spacing (2 mm); its 3 voxels (6 mm) come
    back as 6 mm on the image's grid, whatever the image's spacing along each axis."""
    ndim = len(spacing)
    model, net = _constant_model(ndim, 2.0)
    image = torch.rand(1, 1, *(33,) * ndim)
    out = model(image, image, spacing=spacing).displacement
    assert net.seen[-1] == expected_size
    assert out.shape == (1, ndim, *(33,) * ndim)
    for axis, voxels in enumerate(expected_voxels):
        assert torch.allclose(out[0, axis], torch.tensor(voxels))
        assert float(out[0, axis, 0, 0].mean()) * spacing[axis] == pytest.approx(6.0)
    # on its own grid (today's behaviour): 3 voxels, whatever they measure
    native = model(image, image, spacing=spacing, at_training_spacing=False).displacement
    assert net.seen[-1] == (33,) * ndim and torch.allclose(native, torch.tensor(3.0))
    # at the training spacing already, nothing is resampled
    model(image, image, spacing=(2.0,) * ndim)
    assert net.seen[-1] == (33,) * ndim


def test_an_image_too_small_at_the_training_spacing_is_refused():
    model, _ = _constant_model(3, 2.0)
    image = torch.rand(1, 1, 9, 9, 9)
    with pytest.raises(InputError, match=r"fewer than the network's minimum of 4.*--native-grid"):
        model(image, image, spacing=(0.5, 0.5, 0.5))
    model(image, image, spacing=(0.5, 0.5, 0.5), at_training_spacing=False)  # still allowed


def _upsampled(volume: Volume) -> Volume:
    """The volume at twice the resolution over the same extent (corner voxels kept)."""
    data = torch.from_numpy(volume.data)[None, None]
    size = [2 * n - 1 for n in volume.shape]
    fine = F.interpolate(data, size=size, mode="trilinear", align_corners=True)[0, 0]
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] / 2
    return Volume(fine.numpy(), affine, name="fine")


def test_a_model_registers_a_finer_scan_at_its_training_spacing(
    tiny_checkpoint, tiny_phantom, tmp_path, caplog
):
    model = load_model(tiny_checkpoint)
    fixed_path, moving_path, _ = pair_paths(tiny_phantom)
    fixed, moving = read_volume(fixed_path), read_volume(moving_path)
    assert model.training_grid is not None
    assert model.training_grid.shape == (32, 32, 32)
    assert model.training_grid.spacing == pytest.approx(fixed.spacing)
    coarse = register(model, fixed, moving, mu=0.3).displacement
    fine = register(model, _upsampled(fixed), _upsampled(moving), mu=0.3).displacement
    assert fine.shape == (3, 63, 63, 63)
    # the same motion in mm: twice the voxels at every voxel the two grids share
    assert torch.allclose(fine[:, ::2, ::2, ::2], 2 * coarse, atol=1e-4)
    assert float(coarse.abs().max()) > 0.05  # a field, not zeros
    native = register(
        model, _upsampled(fixed), _upsampled(moving), mu=0.3, at_training_spacing=False
    ).displacement
    assert not torch.allclose(native[:, ::2, ::2, ::2], 2 * coarse, atol=1e-2)
    # a checkpoint without a recorded grid (written before regzoo recorded it) falls back
    state = torch.load(tiny_checkpoint, weights_only=True)
    del state["regzoo"]["training_grid"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    old_model = load_model(old)
    assert old_model.training_grid is None
    with caplog.at_level(logging.WARNING, logger="regzoo"):
        first = register(old_model, _upsampled(fixed), _upsampled(moving), mu=0.3)
        register(old_model, _upsampled(fixed), _upsampled(moving), mu=0.3)
    lines = [r.getMessage() for r in caplog.records if "training grid" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert torch.allclose(first.displacement, native, atol=1e-5)


# -- pre-alignment ----------------------------------------------------------------------------


def _rotated_shifted(
    volume: Volume, degrees: float, shift_mm: float
) -> tuple[Volume, torch.Tensor]:
    """The volume seen through a rotation by ``degrees`` (about the last axis in 3D) and a
    shift of ``shift_mm`` along the first axis, around its centre; returns it and the voxel map
    ``G`` (new image's voxel -> the original's), so original point ``p`` is at ``G^-1 p``."""
    ndim = volume.ndim
    spacing = torch.tensor(volume.spacing, dtype=torch.float64)
    centre = spacing * torch.tensor([(n - 1) / 2 for n in volume.shape], dtype=torch.float64)
    angle = torch.tensor([math.radians(degrees)] if ndim == 2 else [0, 0, math.radians(degrees)])
    shift = torch.zeros(ndim, dtype=torch.float64)
    shift[0] = shift_mm
    G = _voxel_matrix({"rotation": angle.double(), "translation": shift}, spacing, centre)
    data = torch.from_numpy(volume.data)[None, None]
    low = float(data.min())
    moved = warp(data - low, _field(G, volume.shape))[0, 0] + low  # background outside
    return Volume(moved.numpy(), volume.affine, name="moved"), G


def _keypoints(root, case: str, phase: int, shape) -> torch.Tensor:
    path = root / "keypointsTr" / f"PhantomCT_{case}_000{phase}.csv"
    return torch.from_numpy(load_keypoints(path, shape)).float()


def _tre(displacement, fixed_kp, moving_kp, spacing) -> float:
    return float(target_registration_error(fixed_kp, moving_kp, displacement, spacing).mean())


def _mapped(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Voxel points through the inverse of a homogeneous voxel map."""
    inverse = torch.linalg.inv(matrix.double())
    ndim = points.shape[1]
    return (points.double() @ inverse[:ndim, :ndim].T + inverse[:ndim, ndim]).float()


def test_a_rotated_shifted_pair_registers_as_well_as_the_aligned_one(
    tiny_checkpoint, tiny_phantom, tmp_path
):
    """10 degrees and 15 mm: rigid pre-alignment, the network and 20 refinement iterations
    reach the aligned pair's TRE (within 1.10x), and the ITK transform written with the
    alignment reproduces the warp in SimpleITK."""
    model = load_model(tiny_checkpoint)
    fixed_path, moving_path, _ = pair_paths(tiny_phantom)
    fixed, moving = read_volume(fixed_path), read_volume(moving_path)
    fixed_kp = _keypoints(tiny_phantom, "0003", 0, fixed.shape)
    moving_kp = _keypoints(tiny_phantom, "0003", 1, fixed.shape)
    moved, G = _rotated_shifted(moving, 10.0, 15.0)
    moved_kp = _mapped(moving_kp, G)
    aligned = register(model, fixed, moving, refine=RefineOptions(steps=20), mu=0.3)
    tre_aligned = _tre(aligned.displacement, fixed_kp, moving_kp, fixed.spacing)
    tre_unaligned = _tre(torch.zeros_like(aligned.displacement), fixed_kp, moved_kp, fixed.spacing)
    result = register(model, fixed, moved, refine=RefineOptions(steps=20), align="rigid", mu=0.3)
    tre = _tre(result.displacement, fixed_kp, moved_kp, fixed.spacing)
    assert tre <= 1.10 * tre_aligned, (tre, tre_aligned, tre_unaligned)
    assert tre_unaligned > 2 * tre_aligned
    assert result.alignment is not None and result.alignment["kind"] == "rigid"
    found = torch.tensor(result.alignment["voxel_matrix"])
    angle = math.degrees(math.atan2(float(found[1, 0]), float(found[0, 0])))
    assert angle == pytest.approx(-10.0, abs=2.0)
    # the ITK transform is the total map: SimpleITK warps the moved image as regzoo does
    moved_path = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(moved.data, moved.affine), moved_path)
    out = tmp_path / "out"
    out.mkdir()
    names = {p.name for p in save_result(result, out)}
    assert {"alignment.json", "displacement_itk.nii.gz"} <= names
    record = json.loads((out / "alignment.json").read_text())
    assert len(record["world_matrix_ras"]) == 4
    field = sitk.ReadImage(str(out / "displacement_itk.nii.gz"), sitk.sitkVectorFloat64)
    resampled = sitk.Resample(
        sitk.ReadImage(str(moved_path), sitk.sitkFloat32),
        sitk.ReadImage(str(fixed_path), sitk.sitkFloat32),
        sitk.DisplacementFieldTransform(field),
        sitk.sitkLinear,
        0.0,
    )
    by_itk = np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))
    inside = inside_field_of_view(result.displacement)
    assert inside.mean() > 0.5
    span = float(moved.data.max() - moved.data.min())
    assert np.abs(by_itk - result.warped.numpy())[inside].max() < 0.01 * span


def test_pre_alignment_in_2d_and_its_bad_input(
    tiny_phantom_2d, tiny_phantom, tiny_checkpoint, tmp_path, capsys
):
    fixed = read_volume(tiny_phantom_2d / "imagesTr" / "PhantomCT_0004_0000.nii.gz")
    moved, G = _rotated_shifted(fixed, 10.0, 15.0)
    window = (-1000.0, 500.0)
    f = normalize_intensity(fixed.tensor(), window)[None, None]
    m = normalize_intensity(moved.tensor(), window)[None, None]
    for kind in ("rigid", "affine"):
        found = align(f, m, parse_similarity("lncc"), spacing=fixed.spacing, kind=kind)
        assert found.loss < found.initial_loss
        # the map found takes every fixed voxel to where G^-1 put it (within a voxel)
        error = (found.voxel_matrix.double() - torch.linalg.inv(G))[:2]
        corners = torch.tensor([[0, 0, 1], [31, 0, 1], [0, 31, 1], [31, 31, 1]]).double()
        assert float((error @ corners.T).abs().max()) < 1.0, (kind, found.voxel_matrix)
        total = compose(found, torch.zeros(1, 2, 32, 32))
        assert torch.allclose(total, found.displacement)
    # an affine stage between a 2D and a 3D image is one clear error
    model = load_model(tiny_checkpoint)
    path_3d = tiny_phantom / "imagesTr" / "PhantomCT_0003_0000.nii.gz"
    volume_3d = read_volume(path_3d)
    with pytest.raises(InputError, match="affine pre-alignment needs two images of one dimension"):
        register(model, volume_3d, fixed, align="affine")
    with pytest.raises(InputError, match="align must be one of none, rigid, affine"):
        register(model, volume_3d, volume_3d, align="similarity")
    path_2d = tiny_phantom_2d / "imagesTr" / "PhantomCT_0004_0000.nii.gz"
    args = [*register_args(tiny_checkpoint, path_3d, path_2d, tmp_path / "never"), "--affine"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs two images of one dimension" in err[0], err


# -- intensities ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mri_like(tiny_phantom, tmp_path_factory) -> Path:
    """The tiny phantom as an MRI-like set: arbitrary units (0 to ~4000), inverted tissue
    contrast and a smooth bias field; annotations kept."""
    root = tmp_path_factory.mktemp("mri") / "mri"
    shutil.copytree(tiny_phantom, root)
    for path in sorted((root / "imagesTr").glob("*.nii.gz")):
        image = nib.load(path)
        hu = np.asarray(image.dataobj, dtype=np.float32)
        x = np.linspace(0.8, 1.2, hu.shape[0], dtype=np.float32)[:, None, None]
        mri = (3000.0 - 2.0 * np.clip(hu + 1000.0, 0, 1500)) * x + 200.0
        nib.save(nib.Nifti1Image(mri.astype(np.float32), image.affine), path)
    return root


def test_percentile_and_zscore_intensities():
    image = torch.linspace(0, 4000, 16**3).reshape(16, 16, 16)
    rescaled = Intensity("percentile", percentiles=(1.0, 99.0))(image)
    assert float(rescaled.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(rescaled.max()) == pytest.approx(1.0, abs=1e-6)
    z = Intensity("zscore")(image[:, :, 0])  # 2D too
    assert z.shape == (16, 16)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-4) and float(z.std()) == pytest.approx(
        1.0, abs=1e-2
    )
    # a config (or checkpoint) from before data.intensity keeps its CT window
    old = SimpleNamespace(intensity_window=(-500.0, 500.0))
    assert Intensity.from_config(old) == Intensity("window", (-500.0, 500.0))
    with pytest.raises(InputError, match="percentiles must be"):
        Intensity("percentile", percentiles=(99.0, 1.0))


def test_a_percentile_out_of_order_is_one_clear_error(capsys):
    with pytest.raises(ConfigError, match=r"percentiles must be \(low, high\) with 0 <= low"):
        load_config(QUICKSTART, ["data.intensity=percentile", "data.percentiles=[99, 1]"])
    args = ["train", str(QUICKSTART), "--set", "data.percentiles=[99, 1]"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "percentiles must be" in err[0], err


def test_an_mri_like_pair_registers_end_to_end(mri_like, tmp_path):
    from regzoo.training import train

    config = load_config(
        QUICKSTART,
        [*tiny_overrides(mri_like, tmp_path / "run"), "data.intensity=percentile"],
    )
    checkpoint = train(config)
    model = load_model(checkpoint)
    assert model.config.data.intensity == "percentile"  # stored with the config
    fixed, moving, seg = pair_paths(mri_like)
    out = tmp_path / "reg"
    args = [
        *register_args(checkpoint, fixed, moving, out),
        "--refine",
        "3",
        "--moving-seg",
        str(seg),
    ]
    assert main(args) == 0
    warped = nib.load(out / "warped.nii.gz").get_fdata()
    assert warped.max() > 1000  # the moving image's own (MRI) units
    report = tmp_path / "eval.json"
    evaluate = [
        "evaluate",
        "--data",
        str(mri_like),
        "--model",
        str(checkpoint),
        "--out",
        str(report),
    ]
    assert main(evaluate) == 0
    assert json.loads(report.read_text())["mean"]["dice"] > 0.5
