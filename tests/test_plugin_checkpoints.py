"""Checkpoints record the package behind each plugin; loading without it names the package."""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap

import pytest
import torch

from regzoo import regularizers
from regzoo._errors import PluginError
from regzoo.checkpoint import load_model, plugin_origins
from regzoo.config import load_config

SOURCE = textwrap.dedent(
    '''
    from regzoo import ParamSpace, ParamSpec, regularizer
    from regzoo.regularizers import Regularizer, functional

    @regularizer("fake_neo")
    class FakeNeo(Regularizer):
        """Scaled diffusion: k * |grad u|^2."""
        space = ParamSpace.of(ParamSpec(name="k", low=0.0, high=2.0, default=1.0))

        def energy(self, u, params, spacing):
            return params["k"] * functional.diffusion_energy(u, spacing)
    '''
)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A fake installed distribution ``regzoo-fakeneo`` 0.1.0 providing ``fake_neo``; the
    registry is restored afterwards."""
    registry = regularizers.REGULARIZERS
    saved = (dict(registry._items), dict(registry._failed), dict(registry._origins))
    discovered = registry._discovered
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_neo_mod.py").write_text(SOURCE)
    dist = site / "regzoo_fakeneo-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: regzoo-fakeneo\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[regzoo.regularizers]\nfake_neo = fake_neo_mod:FakeNeo\n"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry.discover(refresh=True)
    yield dist
    registry._items, registry._failed, registry._origins = saved
    registry._discovered = discovered
    sys.modules.pop("fake_neo_mod", None)


def _config(tmp_path):
    return load_config(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"root": str(tmp_path / "data")},
            "regularizers": [{"name": "fake_neo"}],
            "trainer": {"max_steps": 1},
        }
    )


def test_a_checkpoint_records_the_package_and_loading_without_it_names_it(installed, tmp_path):
    from regzoo.lightning_module import HyperRegistration

    config = _config(tmp_path)
    assert plugin_origins(config) == [
        {
            "kind": "regularizer",
            "name": "fake_neo",
            "distribution": "regzoo-fakeneo",
            "version": "0.1.0",
        }
    ]
    module = HyperRegistration(config)
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["regzoo"]["plugin_origins"] == plugin_origins(config)
    path = tmp_path / "plugin.ckpt"
    torch.save(checkpoint, path)
    assert load_model(path).space.names == ["fake_neo.k"]  # installed: loads

    # uninstalled: the distribution is gone and the registration forgotten
    shutil.rmtree(installed)
    importlib.invalidate_caches()
    registry = regularizers.REGULARIZERS
    registry._items.pop("fake_neo", None)
    registry._origins.pop("fake_neo", None)
    registry.discover(refresh=True)
    assert "fake_neo" not in regularizers.available()
    with pytest.raises(PluginError) as error:
        load_model(path)
    message = str(error.value)
    assert message.endswith(
        "the model needs the regularizer 'fake_neo' from the package regzoo-fakeneo==0.1.0, "
        "which is not installed: pip install regzoo-fakeneo==0.1.0"
    )
    assert "did you mean" not in message
    assert "\n" not in message


def test_built_ins_record_no_package(tmp_path):
    config = load_config(
        {"regularizers": [{"name": "linear_elastic"}], "trainer": {"max_steps": 1}}
    )
    assert plugin_origins(config) == []
