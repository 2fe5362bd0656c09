"""API edges of issue 32: each trap reproduced, and now one clear line."""

from __future__ import annotations

import pytest
import torch

import regzoo
from regzoo._errors import InputError, unknown_name_message
from regzoo.data.learn2reg import normalize_intensity
from regzoo.io import read_volume


def test_an_unknown_name_without_a_close_match_keeps_its_punctuation():
    assert unknown_name_message("metric", "zzzz", ["dice", "tre"]) == (
        "unknown metric 'zzzz'. Available: dice, tre"
    )
    assert unknown_name_message("metric", "dic", ["dice", "tre"]) == (
        "unknown metric 'dic'; did you mean 'dice'? Available: dice, tre"
    )


class _NotWeights:
    """An object a checkpoint may not hold (unpickling it could run code)."""


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello, not a checkpoint", "not a PyTorch checkpoint file"),
        (b"", "not a PyTorch checkpoint file"),
        (None, "which regzoo never unpickles"),
    ],
    ids=["text", "empty", "objects"],
)
def test_load_model_never_suggests_unsafe_loading(tmp_path, content, reason):
    path = tmp_path / "model.ckpt"
    if content is None:
        torch.save({"x": _NotWeights()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as error:
        regzoo.load_model(path)
    message = str(error.value)
    assert reason in message
    assert "weights_only" not in message
    assert "\n" not in message


@pytest.fixture
def pair(tiny_checkpoint, tiny_phantom):
    model = regzoo.load_model(tiny_checkpoint)
    images = tiny_phantom / "imagesTr"
    fixed = read_volume(images / "PhantomCT_0003_0000.nii.gz")
    moving = read_volume(images / "PhantomCT_0003_0001.nii.gz")
    return model, fixed, moving


def test_refine_on_tensors_refuses_to_guess_the_spacing(pair):
    model, fixed, moving = pair
    assert model.config.energy_units == "mm"
    window = model.config.data.intensity_window
    fixed_t = normalize_intensity(fixed.tensor(), window)[None, None]
    moving_t = normalize_intensity(moving.tensor(), window)[None, None]
    with pytest.raises(InputError, match=r"^refine: .*pass spacing=") as error:
        regzoo.refine(
            model, fixed_t, moving_t, {"lam": 1.0, "mu": 1.0}, regzoo.RefineOptions(steps=3)
        )
    assert "\n" not in str(error.value)
    # with the files' spacing, the tensors give what register(refine=N) gives from the files
    options = regzoo.RefineOptions(steps=3)
    output = regzoo.refine(
        model, fixed_t, moving_t, {"lam": 1.0, "mu": 1.0}, options, spacing=fixed.spacing
    )
    files = regzoo.register(model, fixed.path, moving.path, refine=options, lam=1.0, mu=1.0)
    assert torch.allclose(output.displacement[0], files.displacement, atol=1e-4)


def test_refine_of_a_voxel_unit_model_needs_no_spacing(pair):
    model, fixed, _ = pair
    model.config = model.config.model_copy(update={"energy_units": "voxel"})
    fixed_t = torch.rand(1, 1, *fixed.shape)
    output = regzoo.refine(
        model, fixed_t, fixed_t.clone(), {"lam": 1.0, "mu": 1.0}, regzoo.RefineOptions(steps=1)
    )
    assert output.displacement.shape == (1, 3, *fixed.shape)


def test_registration_result_save_writes_one_output_set(pair, tmp_path):
    model, fixed, moving = pair
    result = regzoo.register(model, fixed.path, moving.path, lam=1.0, mu=1.0)
    written = result.save(tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["disp.nii.gz", "displacement_itk.nii.gz", "jacdet.nii.gz", "warped.nii.gz"]
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in written)
    again = read_volume(tmp_path / "out" / "warped.nii.gz")
    assert again.shape == fixed.shape
    assert (again.affine == fixed.affine).all()
    # a folder holding someone else's files is refused, and left as it was
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(regzoo.OutputExistsError):
        result.save(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("axis", "values"),
    [("0.1:10:3", [0.1, 1.0, 10.0]), ("0.1,1", [0.1, 1.0]), ([0.1, 1.0], [0.1, 1.0])],
)
def test_choose_parameters_takes_the_command_lines_grid_text(pair, axis, values):
    model, fixed, moving = pair
    params, result = regzoo.choose_parameters(
        model, fixed.path, moving.path, grid={"lam": axis}, criterion="lcurve"
    )
    swept = sorted({row["linear_elastic.lam"] for row in result.rows})
    assert swept == pytest.approx(values, rel=1e-5)
    assert params["linear_elastic.lam"] in swept


def test_a_malformed_grid_text_is_one_line(pair):
    model, fixed, moving = pair
    with pytest.raises(InputError, match=r"^grid entry 'lam=0\.1:1' must look like") as error:
        regzoo.choose_parameters(
            model, fixed.path, moving.path, grid={"lam": "0.1:1"}, criterion="lcurve"
        )
    assert "\n" not in str(error.value)


def test_a_checkpoint_whose_config_this_version_refuses_is_one_line(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["regzoo"]["config"]["data"]["from_the_future"] = 1
    path = tmp_path / "future.ckpt"
    torch.save(state, path)
    with pytest.raises(InputError) as error:
        regzoo.load_model(path)
    message = str(error.value)
    assert "\n" not in message
    assert "its stored config is invalid (a checkpoint of another regzoo version?)" in message
    assert "data: unknown key 'from_the_future'" in message
    assert "pydantic" not in message
