import importlib
import sys
import textwrap

import pytest

from regzoo import PluginError, load_plugin, regularizers
from regzoo.registry import Registry
from regzoo.regularizers import Regularizer
from regzoo.testing import check_regularizer

PLUGIN_SOURCE = textwrap.dedent(
    '''
    from regzoo import ParamSpace, ParamSpec, regularizer
    from regzoo.regularizers import Regularizer, functional

    @regularizer("{name}")
    class Scaled(Regularizer):
        """Scaled diffusion: k * |grad u|^2."""
        space = ParamSpace.of(ParamSpec(name="k", low=0.0, high=2.0, default=1.0))

        def energy(self, u, params, spacing):
            return params["k"] * functional.diffusion_energy(u, spacing)
    '''
)


@pytest.fixture
def clean_registry():
    """Forget plugin registrations made by a test."""
    registry = regularizers.REGULARIZERS
    saved = (dict(registry._items), dict(registry._failed), dict(registry._origins))
    discovered = registry._discovered
    yield registry
    registry._items, registry._failed, registry._origins = saved
    registry._discovered = discovered


def test_register_from_a_plugin_file(tmp_path, clean_registry):
    path = tmp_path / "scaled_plugin.py"
    path.write_text(PLUGIN_SOURCE.format(name="scaled_diffusion_file"))
    load_plugin(str(path))
    cls = regularizers.get("scaled_diffusion_file")
    assert cls.space.names == ["k"]
    check_regularizer(cls)


def test_register_from_an_installed_entry_point(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "ep_plugin_mod.py").write_text(PLUGIN_SOURCE.format(name="scaled_diffusion_ep"))
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[regzoo.regularizers]\n"
        "scaled_diffusion_ep = ep_plugin_mod:Scaled\n"
        "broken_one = ep_plugin_missing_module:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.warns(RuntimeWarning, match="plugin 'broken_one'"):
        clean_registry.discover(refresh=True)
    assert "scaled_diffusion_ep" in regularizers.available()
    # the broken plugin is named, with its cause, and the built-ins are still there
    with pytest.raises(PluginError, match=r"'broken_one'.*ModuleNotFoundError"):
        regularizers.get("broken_one")
    assert {"diffusion", "linear_elastic"} <= set(regularizers.available())
    sys.modules.pop("ep_plugin_mod", None)


def test_broken_plugin_file_gives_one_clear_error(tmp_path, clean_registry):
    path = tmp_path / "broken.py"
    path.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(PluginError, match=r"plugin '.*broken.py' failed to load: ModuleNotFound"):
        load_plugin(str(path))
    with pytest.raises(PluginError, match="no such file"):
        load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(PluginError, match="plugin 'no_such_module_abc'"):
        load_plugin("no_such_module_abc")
    assert "linear_elastic" in regularizers.available()


def test_duplicate_names_and_bad_classes_are_rejected():
    registry: Registry[Regularizer] = Registry("thing", "regzoo.test_group_none")

    class A:
        pass

    class B:
        pass

    registry.add("a", A)  # type: ignore[arg-type]  # a registry without a check takes any class
    registry.add("a", A)  # type: ignore[arg-type]  # re-registering the same class is harmless
    with pytest.raises(ValueError, match="already registered"):
        registry.add("a", B)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must subclass"):
        regularizers.regularizer("not_a_regularizer")(A)  # type: ignore[arg-type]

    class Reserved(Regularizer):
        from regzoo import ParamSpace, ParamSpec

        space = ParamSpace.of(ParamSpec(name="alpha", low=0, high=1, default=0))

    with pytest.raises(ValueError, match="reserved"):
        regularizers.regularizer("reserved_thing")(Reserved)


def _install_entry_points(tmp_path, monkeypatch, module: str, source: str, lines: str) -> None:
    """A fake installed distribution ``ep-plugin`` 0.1 with ``module`` and entry points."""
    (tmp_path / f"{module}.py").write_text(source)
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[regzoo.regularizers]\n{lines}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()


def test_an_entry_point_named_like_a_built_in_is_one_warning_and_a_failed_entry(
    tmp_path, monkeypatch, clean_registry
):
    source = PLUGIN_SOURCE.format(name="diffusion_clash_unused")
    _install_entry_points(
        tmp_path, monkeypatch, "clash_mod", source, "diffusion = clash_mod:Scaled"
    )
    with pytest.warns(RuntimeWarning, match="'diffusion' is a built-in regularizer") as record:
        clean_registry.discover(refresh=True)
    assert len([w for w in record if "diffusion" in str(w.message)]) == 1
    assert "diffusion" in clean_registry.failed
    assert regularizers.get("diffusion").__module__.startswith("regzoo.")  # the built-in stays
    assert "clash_mod" not in sys.modules  # never imported


def test_one_name_per_regularizer_entry_point_and_decorator(tmp_path, monkeypatch, clean_registry):
    source = PLUGIN_SOURCE.format(name="scaled_by_decorator")
    _install_entry_points(
        tmp_path, monkeypatch, "two_names_mod", source, "other_name = two_names_mod:Scaled"
    )
    with pytest.warns(RuntimeWarning, match="registers itself as 'scaled_by_decorator'"):
        clean_registry.discover(refresh=True)
    assert "other_name" not in regularizers.available()
    with pytest.raises(PluginError, match="name the entry point 'scaled_by_decorator'"):
        regularizers.get("other_name")
    sys.modules.pop("two_names_mod", None)


def test_the_distribution_of_an_entry_point_plugin_is_known(tmp_path, monkeypatch, clean_registry):
    source = PLUGIN_SOURCE.format(name="scaled_from_dist")
    _install_entry_points(
        tmp_path, monkeypatch, "dist_mod", source, "scaled_from_dist = dist_mod:Scaled"
    )
    clean_registry.discover(refresh=True)
    assert clean_registry.origin("scaled_from_dist") == ("ep-plugin", "0.1")
    assert clean_registry.origin("linear_elastic") is None  # built-ins have no origin
    sys.modules.pop("dist_mod", None)
