"""2D end to end: phantom, training, register, evaluate and sweep on 32x32 coronal slices."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_overrides

from regzoo.cli import main
from regzoo.config import load_config
from regzoo.data.phantom import generate_case

ROOT = Path(__file__).resolve().parents[1]


def test_2d_phantom_motion_maps_moving_onto_fixed():
    case = generate_case((48, 40), seed=2)
    assert case.fixed.shape == (48, 40) and case.displacement.shape == (2, 48, 40)
    assert case.fixed_keypoints.shape[1] == 2 and len(case.fixed_keypoints) > 10
    # keypoints move with the true field and stay inside the image
    assert np.all((case.moving_keypoints > -1) & (case.moving_keypoints < np.array([48, 40])))
    assert np.abs(case.displacement).max() > 0.5


@pytest.fixture(scope="module")
def checkpoint_2d(tiny_phantom_2d, tmp_path_factory):
    from regzoo.training import train

    config = load_config(
        ROOT / "configs" / "quickstart_2d.yaml",
        [
            *tiny_overrides(tiny_phantom_2d, tmp_path_factory.mktemp("q2d") / "run"),
            "data.phantom.shape=[32, 32]",
        ],
    )
    return train(config), tiny_phantom_2d


def test_phantom_cli_in_2d_needs_no_val(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["phantom", str(data), "--ndim", "2", "--shape", "32", "32", "--n", "4"]) == 0
    manifest = json.loads((data / "PhantomCT_dataset.json").read_text())
    assert len(manifest["registration_val"]) == 1  # a quarter of --n 4
    assert nib.load(data / "imagesTr" / "PhantomCT_0001_0000.nii.gz").shape == (32, 32)
    assert main(["phantom", str(tmp_path / "x"), "--ndim", "2", "--shape", "32"]) == 2
    assert "--shape has 1 sizes but --ndim is 2" in capsys.readouterr().err


def test_2d_register_evaluate_sweep(checkpoint_2d, tmp_path, capsys):
    checkpoint, data = checkpoint_2d
    manifest = json.loads((data / "PhantomCT_dataset.json").read_text())
    fixed, moving = (data / p for p in manifest["registration_val"][0].values())
    out = tmp_path / "reg"
    args = ["register", "--model", str(checkpoint), "--fixed", str(fixed), "--moving", str(moving)]
    assert main([*args, "--param", "mu=0.1", "--refine", "3", "--figure", "--out", str(out)]) == 0
    disp = nib.load(out / "disp.nii.gz")
    assert disp.shape == (32, 32, 2)
    assert (out / "figure.png").stat().st_size > 1000
    report = tmp_path / "eval.json"
    assert (
        main(["evaluate", "--model", str(checkpoint), "--data", str(data), "--out", str(report)])
        == 0
    )
    scores = json.loads(report.read_text())["mean"]
    assert 0 < scores["dice"] <= 1 and scores["tre_mm"] > 0
    sweep_out = tmp_path / "sweep"
    sweep = ["sweep", "--model", str(checkpoint), "--data", str(data), "--out", str(sweep_out)]
    assert main([*sweep, "--grid", "mu=0.01:100:3", "--figure"]) == 0
    assert (sweep_out / "heatmap.png").is_file() and (sweep_out / "overlay.png").is_file()
    capsys.readouterr()


def test_2d_model_refuses_3d_images(checkpoint_2d, tiny_phantom, capsys):
    checkpoint, _ = checkpoint_2d
    image = str(next((tiny_phantom / "imagesTr").glob("*_0000.nii.gz")))
    args = ["register", "--model", str(checkpoint), "--fixed", image, "--moving", image]
    assert main([*args, "--out", "/tmp/never-written-2d"]) == 2
    assert "registers 2D images, got 3D" in capsys.readouterr().err
    assert not Path("/tmp/never-written-2d").exists()
