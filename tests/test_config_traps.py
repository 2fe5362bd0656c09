"""Config traps: each mistake is one line naming the key, found before anything is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from regzoo.config import ConfigError, TrainerConfig, load_config
from regzoo.resolve import build_objective
from regzoo.trainer_check import check_trainer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(
        "name: x\nregularizers:\n  - name: diffusion\nregularizers:\n  - name: linear_elastic\n"
    )
    with pytest.raises(ConfigError, match=r"line 4: key 'regularizers' appears twice") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_a_malformed_set_value_is_one_line_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"--set trainer\.max_steps: '\[1,' is not a value"
    ) as info:
        load_config(QUICKSTART, ["trainer.max_steps=[1,"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"--set name: .*appears twice"):
        load_config(QUICKSTART, ["name={a: 1, a: 2}"])


def test_a_range_error_names_the_term_and_the_parameter():
    config = load_config(QUICKSTART, ["regularizers.0.params.lam={low: -1, high: 10, scale: log}"])
    with pytest.raises(ConfigError) as info:
        build_objective(config)
    assert str(info.value) == (
        "invalid config: regularizers.0: parameter 'lam'=-1.0 leaves its physical domain [0, inf)"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("accelerator", "cpux", r"trainer\.accelerator: 'cpux' is not an accelerator .*'cpu'"),
        ("precision", "16-mixd", r"trainer\.precision: '16-mixd' is not a precision .*'16-mixed'"),
        ("strategy", "dpp", r"trainer\.strategy: 'dpp' is not a strategy .*'ddp'"),
        ("devices", 0, r"trainer\.devices: this machine cannot run"),
    ],
)
def test_lightning_fields_are_checked_by_name(field, value, message):
    trainer = TrainerConfig(**{"max_steps": 2, "accelerator": "cpu", field: value})
    with pytest.raises(ConfigError, match=message) as info:
        check_trainer(trainer)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="a CUDA machine can run accelerator=gpu"
)
def test_an_accelerator_this_machine_lacks_is_refused():
    with pytest.raises(ConfigError, match=r"trainer\.accelerator: this machine cannot run"):
        check_trainer(TrainerConfig(max_steps=2, accelerator="gpu"))


def test_the_quickstart_trainer_passes():
    check_trainer(load_config(QUICKSTART).trainer)


def test_the_cli_reports_a_duplicate_key_in_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(QUICKSTART.read_text() + "\nname: again\n")
    run = subprocess.run(
        [sys.executable, "-m", "regzoo", "train", str(path), "--set", f"run_dir={tmp_path / 'r'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "key 'name' appears twice" in run.stderr
    assert not (tmp_path / "r").exists()


def test_a_trainer_typo_stops_train_before_the_run_dir_is_made(tmp_path):
    run = subprocess.run(
        [
            sys.executable, "-m", "regzoo", "train", str(QUICKSTART),
            "--set", f"run_dir={tmp_path / 'r'}", "--set", f"data.root={tmp_path / 'd'}",
            "--set", "trainer.accelerator=gpux",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0, run.stderr
    assert "trainer.accelerator: 'gpux' is not an accelerator" in run.stderr
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "d").exists()
