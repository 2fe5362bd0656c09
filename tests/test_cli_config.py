"""``regzoo config check`` and ``regzoo config show``: a config checked before a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from regzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path, monkeypatch):
    """The quick start config copied into an empty working folder."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "quickstart.yaml"
    shutil.copy(ROOT / "configs" / "quickstart.yaml", path)
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_check_prints_ok_and_a_summary_and_writes_nothing(config, capsys):
    before = _files(config.parent)
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ok"
    assert "  regularizers: linear_elastic" in out
    assert "  free parameters: linear_elastic.lam, linear_elastic.mu" in out
    assert any(
        line.startswith("  data: data/phantom (built from the configured phantom") for line in out
    )
    assert _files(config.parent) == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.accelerator=gpux", "trainer.accelerator: 'gpux' is not an accelerator"),
        ("trainer.precision=33", "trainer.precision"),
        (
            "regularizers.0.name=neohook",
            "unknown regularizer 'neohook'; did you mean 'neo_hookean'?",
        ),
        ("similarity.name=lnc", "lnc"),
        ("trainer.max_steps=[1", "trainer.max_steps"),
        ("data.batch_size=0", "data.batch_size"),
    ],
)
def test_check_refuses_in_one_line_and_writes_nothing(config, capsys, override, message):
    before = _files(config.parent)
    assert main(["config", "check", str(config), "--set", override]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("regzoo config: error: ")
    assert message in err
    assert _files(config.parent) == before


def test_check_refuses_a_missing_data_folder_without_a_phantom(config, capsys):
    args = ["config", "check", str(config), "--set", "data.root=nowhere"]
    assert main([*args, "--set", "data.phantom=null"]) == 2
    assert (
        "data.root nowhere does not exist and no phantom is configured" in capsys.readouterr().err
    )
    assert main(args) == 0  # with the default phantom it is built at first use
    assert not (config.parent / "nowhere").exists()


def test_check_a_missing_file(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_show_prints_the_resolved_config(config, capsys):
    assert main(["config", "show", str(config), "--set", "trainer.max_steps=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["trainer"]["max_steps"] == 7
    assert shown["regularizers"][0]["name"] == "linear_elastic"
    assert "intensity_window" in shown["data"]  # defaults filled in
    from regzoo.config import load_config

    assert load_config(shown) == load_config(config, ["trainer.max_steps=7"])


def test_show_refuses_a_bad_override_in_one_line(config, capsys):
    assert main(["config", "show", str(config), "--set", "trainer.max_step=7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "max_step" in err
