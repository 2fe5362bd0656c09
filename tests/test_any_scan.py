"""Any scan: no autograd in network-only passes, the network at its training spacing,
pre-alignment and intensity normalisations (issue 30)."""

import logging
import warnings
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from regzoo._errors import InputError
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.config import load_config
from regzoo.inference import register
from regzoo.io import Volume, read_volume
from regzoo.nets import RegistrationOutput
from regzoo.registration_model import RegistrationModel, TrainingGrid
from tests.conftest import QUICKSTART
from tests.test_inference_cli import pair_paths, register_args, sweep_args


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
