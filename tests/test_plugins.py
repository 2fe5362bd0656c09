"""The example plugins: reusable contract, installation through an entry point, the file route."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from regzoo import load_plugin, regularizers
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.testing import check_regularizer, check_regularizer_properties

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "regzoo-neohookean"
FILE_PLUGIN = ROOT / "plugins" / "file_plugin_example" / "directional_diffusion.py"


def test_contract_holds_for_the_file_plugin():
    load_plugin(str(FILE_PLUGIN))
    check_regularizer(regularizers.get("directional_diffusion"))
    check_regularizer_properties(regularizers.get("directional_diffusion"), max_examples=10)


def test_file_plugin_named_in_a_config_trains_and_reloads(tiny_phantom, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the plugin relative to the repository
    run_dir = tmp_path / "run"
    args = ["train", str(ROOT / "plugins/file_plugin_example/config.yaml")]
    for override in tiny_overrides(tiny_phantom, run_dir):
        args += ["--set", override]
    assert main(args) == 0
    model = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert model.space.names == ["directional_diffusion.axial_weight"]
    assert model.space["directional_diffusion.axial_weight"].scale == "log"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """pip-install the example package (no network: no build isolation, no dependencies)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(PACKAGE),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def run_regzoo(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "regzoo", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_installed_plugin_is_listed_trains_and_sweeps(installed_plugin, tiny_phantom, tmp_path):
    listing = run_regzoo(installed_plugin, "regularizers", "--json")
    assert listing.returncode == 0, listing.stderr
    entry = next(e for e in json.loads(listing.stdout) if e["name"] == "neo_hookean_example")
    assert [p["name"] for p in entry["params"]] == ["lam", "mu"]
    assert entry["params"][1]["default"] == 0.03

    run_dir = tmp_path / "run"
    args = ["train", str(PACKAGE / "neohookean.yaml")]
    for override in tiny_overrides(tiny_phantom, run_dir):
        args += ["--set", override]
    trained = run_regzoo(installed_plugin, *args)
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = run_dir / "checkpoints" / "last.ckpt"

    swept = run_regzoo(
        installed_plugin,
        "sweep",
        "--model",
        str(checkpoint),
        "--data",
        str(tiny_phantom),
        "--grid",
        "lam=0:1:2",
        "--grid",
        "mu=0:1:2",
        "--out",
        str(tmp_path / "sweep"),
    )
    assert swept.returncode == 0, swept.stderr[-2000:]
    report = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert report["names"] == ["neo_hookean_example.lam", "neo_hookean_example.mu"]
    assert len(report["settings"]) == 4

    # without the plugin installed, loading the checkpoint names what is missing
    missing = subprocess.run(
        [sys.executable, "-c", f"import regzoo; regzoo.load_model({str(checkpoint)!r})"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert missing.returncode != 0 and "neo_hookean_example" in missing.stderr
