"""Pretrained models shipped in the package, loaded by name (issue 32, item 2)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

import regzoo
from regzoo._errors import InputError, UnknownNameError
from regzoo.checkpoint import load_model, write_weights_only
from regzoo.cli import main
from regzoo.fingerprint import FINGERPRINT_KEY, weights_fingerprint
from regzoo.pretrained_models import (
    PRETRAINED_DIR,
    available_pretrained,
    pretrained_card,
    resolve_model,
)
from regzoo.registration_model import RegistrationModel

SHIPPED = ["chest-ct-64", "phantom-64"]
ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_models_are_listed_small_and_carded():
    assert set(SHIPPED) <= set(available_pretrained())
    for name in available_pretrained():
        weights = PRETRAINED_DIR / f"{name}.pt"
        assert weights.stat().st_size <= 5 * 2**20, name  # <= 5 MB each
        card = pretrained_card(name)
        assert card["name"] == name and card["file"] == weights.name
        assert card["steps"] > 0 and card["retrain"].startswith("regzoo ")
        assert card["config"]["trainer"]["max_steps"] == card["steps"]
        assert card["data_set"]["train_pairs"] > 0 and card["figures"], name
        state = torch.load(weights, weights_only=True, map_location="cpu")
        assert set(state) == {"state_dict", "regzoo"}  # no optimizer state


@pytest.mark.parametrize("name", SHIPPED)
def test_load_by_name(name):
    model = regzoo.pretrained(name)
    assert isinstance(model, RegistrationModel) and not model.training
    assert model.space.names == pretrained_card(name)["free_parameters"]
    assert isinstance(load_model(name), RegistrationModel)  # load_model takes the name too


def test_register_a_pair_by_name_through_the_cli(tiny_phantom, tmp_path, capsys):
    images = tiny_phantom / "imagesTr"
    fixed, moving = sorted(images.glob("*_0003_*.nii.gz"))
    out = tmp_path / "out"
    args = ["register", "--model", "chest-ct-64", "--fixed", str(fixed), "--moving", str(moving)]
    args += ["--out", str(out), "--param", "lam=1", "--param", "mu=1"]
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "disp.nii.gz").is_file()


def test_an_unknown_name_lists_the_available_ones(tmp_path, capsys):
    args = ["register", "--model", "chest-ct-46", "--fixed", "f.nii.gz", "--moving", "m.nii.gz"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "unknown pretrained model 'chest-ct-46'" in err[0]
    assert "did you mean 'chest-ct-64'" in err[0]
    assert "Available: " + ", ".join(available_pretrained()) in err[0]
    with pytest.raises(UnknownNameError, match="Available"):
        regzoo.pretrained("nope")


def test_a_file_wins_and_a_missing_path_is_a_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("phantom-64").write_text("not a checkpoint")
    assert resolve_model("phantom-64") == Path("phantom-64")  # an existing file wins
    assert resolve_model("runs/x/last.ckpt") == Path("runs/x/last.ckpt")
    args = ["register", "--model", "runs/x/last.ckpt", "--fixed", "f", "--moving", "m"]
    assert main([*args, "--out", "o"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_write_weights_only_keeps_what_load_model_needs(tiny_checkpoint, tmp_path):
    slim = write_weights_only(tiny_checkpoint, tmp_path / "slim.pt")
    assert slim.stat().st_size < Path(tiny_checkpoint).stat().st_size
    stored = torch.load(slim, weights_only=True)["regzoo"]
    assert stored[FINGERPRINT_KEY] == weights_fingerprint(load_model(slim).state_dict())
    before, after = load_model(tiny_checkpoint), load_model(slim)
    for (name, a), (_, b) in zip(
        before.state_dict().items(), after.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_weights_carry_their_fingerprint(name, tmp_path):
    """A shipped file is checked like a run's checkpoint: altered weights are refused."""
    state = torch.load(PRETRAINED_DIR / f"{name}.pt", weights_only=True, map_location="cpu")
    assert len(state["regzoo"][FINGERPRINT_KEY]) == 64  # a SHA-256, hex
    first = sorted(state["state_dict"])[0]
    state["state_dict"][first] = state["state_dict"][first] + 1e-3
    altered = tmp_path / f"{name}.pt"
    torch.save(state, altered)
    with pytest.raises(InputError, match="fingerprint differs"):
        load_model(altered)


def test_the_models_are_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["regzoo"]
    assert "pretrained/*.pt" in patterns and "pretrained/*.json" in patterns
    card = json.loads((PRETRAINED_DIR / "chest-ct-64.json").read_text())
    assert "chest-ct" in card["retrain"]
