from pathlib import Path
from typing import Any

import pytest

from regzoo.config import ConfigError, ParamRange, apply_overrides, load_config
from regzoo.resolve import build_objective

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
QUICKSTART_PATH = ROOT / "configs" / "quickstart.yaml"
BASE: dict[str, Any] = {"regularizers": [{"name": "linear_elastic"}], "trainer": {"max_steps": 5}}


def resolve(source):
    """Validate the schema, then resolve the components (where names meet registries)."""
    return build_objective(load_config(source))


def test_configs_exist_and_validate():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert "quickstart.yaml" in names
    assert sum(n.startswith("paper/") for n in names) >= 9
    for path in CONFIGS:
        resolve(path)


def test_unknown_keys_name_close_matches():
    with pytest.raises(ConfigError, match=r"optimizer: unknown key 'lrr'; did you mean 'lr'"):
        load_config({**BASE, "optimizer": {"lrr": 0.1}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'regularisers'; did you mean 'regularizers'"
    ):
        load_config({"regularisers": [], "trainer": {"max_steps": 1}})


def test_overrides():
    data = apply_overrides(
        BASE,
        [
            "trainer.max_steps=7",
            "regularizers.0.alpha={low: 0, high: 1}",
            "data.root=/tmp/x",
            "model.enc=[8, 8]",
        ],
    )
    config = load_config(data)
    assert config.trainer.max_steps == 7
    alpha = config.regularizers[0].alpha
    assert isinstance(alpha, ParamRange) and alpha.high == 1
    assert str(config.data.root) == "/tmp/x" and config.model.enc == [8, 8]
    assert BASE["trainer"]["max_steps"] == 5  # the input is not modified
    with pytest.raises(ConfigError, match=r"must look like dotted\.key=value"):
        apply_overrides(BASE, ["trainer.max_steps"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(BASE, ["regularizers.3.alpha=1"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(BASE, ["trainer.max_steps.x=1"])


def test_values_are_parsed_as_data_never_evaluated():
    data = apply_overrides(BASE, ["name=__import__('os').system('echo hi')"])
    assert data["name"] == "__import__('os').system('echo hi')"


def test_component_errors():
    with pytest.raises(ConfigError, match="unknown regularizer 'linear_elastik'; did you mean"):
        resolve({**BASE, "regularizers": [{"name": "linear_elastik"}]})
    with pytest.raises(ConfigError, match=r"regularizers\.0: unknown parameter 'lambda'"):
        resolve({**BASE, "regularizers": [{"name": "linear_elastic", "params": {"lambda": 1}}]})
    with pytest.raises(ConfigError, match=r"similarity\.options\.window: Input should be greater"):
        resolve({**BASE, "similarity": {"name": "lncc", "options": {"window": 0}}})
    with pytest.raises(ConfigError, match="unknown similarity 'ncc'"):
        resolve({**BASE, "similarity": {"name": "ncc"}})
    with pytest.raises(ConfigError, match=r"needs model\.int_steps > 0"):
        resolve({**BASE, "regularize": "velocity"})
    with pytest.raises(ConfigError, match="plain VoxelMorph with fixed parameters"):
        resolve({**BASE, "model": {"hyper": False}})
    plain = resolve(
        {
            **BASE,
            "model": {"hyper": False},
            "regularizers": [{"name": "linear_elastic", "params": {"lam": 0.1, "mu": 0.1}}],
        }
    )
    assert plain.space.names == []
    with pytest.raises(ConfigError, match="every parameter is fixed"):
        resolve({**BASE, "regularizers": [{"name": "diffusion"}]})
    with pytest.raises(ConfigError, match="appears twice"):
        resolve({**BASE, "regularizers": [{"name": "diffusion"}, {"name": "diffusion"}]})
    with pytest.raises(ConfigError, match="log-scale range needs low > 0"):
        resolve(
            {
                **BASE,
                "regularizers": [
                    {
                        "name": "linear_elastic",
                        "params": {"mu": {"low": 0, "high": 1, "scale": "log"}},
                    }
                ],
            }
        )
    with pytest.raises(ConfigError, match="set max_steps or max_epochs"):
        resolve({**BASE, "trainer": {}})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        resolve("/nonexistent/config.yaml")


def test_broken_plugin_in_config(tmp_path):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(
        ConfigError, match=r"plugin '.*bad_plugin.py' failed to load: RuntimeError: boom"
    ):
        resolve({**BASE, "plugins": [str(plugin)]})


def test_free_parameter_space_of_paper_configs():
    from regzoo.resolve import build_objective

    hyper = build_objective(load_config(ROOT / "configs/paper/hyperelastic_lam5_mu1.yaml"))
    assert hyper.space.names == ["linear_elastic.lam", "linear_elastic.mu"]
    assert hyper.space["linear_elastic.lam"].high == 5.0
    assert hyper.fixed_values() == {"linear_elastic.alpha": 1.0}
    fixed = build_objective(load_config(ROOT / "configs/paper/elastic_laifook_x1.yaml"))
    assert fixed.space.names == ["linear_elastic.alpha"]
    assert fixed.fixed_values()["linear_elastic.lam"] == pytest.approx(45.33)
    diffusion = build_objective(load_config(ROOT / "configs/paper/hypermorph_diffusion.yaml"))
    assert diffusion.space.names == ["diffusion.alpha"]
    assert diffusion.canonical_name("alpha") == "diffusion.alpha"
    with pytest.raises(KeyError, match="was fixed during training"):
        fixed.canonical_name("mu")


def test_physical_domain_and_log_ranges_are_checked():
    def config_with(params):
        return {**BASE, "regularizers": [{"name": "linear_elastic", "params": params}]}

    with pytest.raises(ConfigError, match=r"physical domain \[0, inf\)"):
        resolve(config_with({"lam": -1.0}))
    with pytest.raises(ConfigError, match=r"physical domain"):
        resolve(config_with({"mu": {"low": -1.0, "high": 1.0, "scale": "linear"}}))
    with pytest.raises(ConfigError, match="declared on a log scale"):
        resolve(config_with({"mu": {"low": 0.0, "high": 1.0}}))
    with pytest.raises(ConfigError, match="physical domain"):
        resolve({**BASE, "regularizers": [{"name": "diffusion", "alpha": -2.0}]})
    quickstart = resolve(ROOT / "configs/quickstart.yaml")
    for name in ("linear_elastic.lam", "linear_elastic.mu"):
        spec = quickstart.space[name]
        assert (spec.low, spec.high, spec.scale) == (0.1, 10.0, "log")
    assert quickstart.resolve({"lam": 0.1, "mu": 10}) == {
        "linear_elastic.lam": 0.1,
        "linear_elastic.mu": 10.0,
    }


def test_overrides_follow_the_fields_declared_type(tmp_path):
    # text fields keep the text where YAML would read a boolean or a number
    config = load_config(
        QUICKSTART_PATH,
        ["name=yes", "run_dir=2024", "data.root=123", "trainer.accelerator=no"],
    )
    assert config.name == "yes"
    assert config.run_dir == Path("2024")
    assert config.data.root == Path("123")
    assert config.trainer.accelerator == "no"
    # numbers, booleans, null and lists still parse as YAML where the field takes them
    config = load_config(
        QUICKSTART_PATH,
        [
            "seed=3",
            "trainer.progress_bar=no",
            "trainer.max_epochs=null",
            "trainer.devices=2",
            "model.enc=[8, 8]",
            "regularizers.0.params.lam=0.5",
        ],
    )
    assert config.seed == 3 and config.trainer.progress_bar is False
    assert config.trainer.max_epochs is None and config.trainer.devices == 2
    assert config.model.enc == [8, 8]
    assert config.regularizers[0].params["lam"] == 0.5
    # a value the field cannot take is still reported at its key
    with pytest.raises(ConfigError, match="seed"):
        load_config(QUICKSTART_PATH, ["seed=abc"])


def test_resume_of_a_folder_named_like_a_number(tmp_path, capsys, monkeypatch):
    from regzoo.cli import main

    monkeypatch.chdir(tmp_path)
    # the run folder "2024" is looked up as a folder (and is missing), not refused as a number
    assert main(["train", str(QUICKSTART_PATH), "--resume", "2024"]) == 2
    assert "nothing to resume: 2024/" in capsys.readouterr().err
