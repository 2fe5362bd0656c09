from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

from regzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_trains_two_steps(config, tiny_phantom, tiny_phantom_2d, tmp_path):
    run_dir = tmp_path / "run"
    planar = yaml.safe_load(config.read_text()).get("model", {}).get("ndim") == 2
    data = tiny_phantom_2d if planar else tiny_phantom
    extra = ["data.phantom.shape=[32, 32]"] if planar else []
    args = ["train", str(config)]
    for override in [*tiny_overrides(data, run_dir), *extra]:
        args += ["--set", override]
    assert main(args) == 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["trainer"]["max_steps"] == 2 and resolved["data"]["root"] == str(data)


def test_train_errors_leave_nothing_on_disk(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "configs/quickstart.yaml"),
            "--set",
            f"run_dir={run_dir}",
            "--set",
            "optimizer.lrr=1",
        ]
    )
    assert code == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    code = main(
        [
            "train",
            str(ROOT / "configs/paper/hypermorph_diffusion.yaml"),
            "--set",
            f"run_dir={run_dir}",
            "--set",
            f"data.root={tmp_path / 'nodata'}",
        ]
    )
    assert code == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_mixed_precision_and_diffeomorphic_training(tiny_phantom, tmp_path):
    run_dir = tmp_path / "amp"
    args = ["train", str(ROOT / "configs/quickstart.yaml")]
    # as AMP's gradient scaler does, a step whose low-precision gradients overflow is skipped
    extra = [
        "trainer.precision=bf16-mixed",
        "model.int_steps=3",
        "regularize=velocity",
        "trainer.nonfinite=skip",
    ]
    for override in [*tiny_overrides(tiny_phantom, run_dir), *extra]:
        args += ["--set", override]
    assert main(args) == 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
