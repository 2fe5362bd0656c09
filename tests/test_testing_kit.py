"""regzoo.testing: opt-in for pytest, and the spacing property that ties an energy to its units."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from regzoo import ParamSpace, ParamSpec, Regularizer
from regzoo.regularizers import REGULARIZERS, functional
from regzoo.spatial import gradient
from regzoo.testing import check_regularizer, check_regularizer_properties, spacing_factor

ROOT = Path(__file__).resolve().parents[1]


def test_regzoo_installs_no_pytest_plugin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "pytest11" not in project.get("entry-points", {})
    # the kit imports neither pytest nor hypothesis: a library import stays a library import
    code = (
        "import sys, regzoo.testing; "
        "print(sorted(m for m in ('pytest', 'hypothesis') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _installed_pytest_plugins() -> list[str]:
    """The ``pytest11`` entry points of the installed regzoo distribution's metadata."""
    from importlib.metadata import distribution

    return [ep.value for ep in distribution("regzoo").entry_points if ep.group == "pytest11"]


def test_pytest_in_an_unrelated_project_does_not_load_regzoo(tmp_path):
    if _installed_pytest_plugins():
        pytest.skip("the installed regzoo metadata predates this checkout: run `make install`")
    (tmp_path / "test_unrelated.py").write_text(
        "import sys\n\n\ndef test_regzoo_is_not_loaded():\n"
        "    assert not [m for m in sys.modules if m.split('.')[0] == 'regzoo']\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:]


class FormerTutorialEnergy(Regularizer):
    """The plugin tutorial's former energy: the displacement in voxels differentiated per mm."""

    space = ParamSpace.of(ParamSpec(name="mu", low=0.0, high=1.0, default=0.5, domain=(0.0, None)))

    def energy(self, u, params, spacing):
        density = gradient(u, spacing).pow(2).sum(dim=(1, 2))  # no to_physical: voxels per mm
        mu = functional.per_sample(params["mu"], density, "mu", "former_energy")
        return functional.domain_mean(mu * density)


def test_the_spacing_check_catches_a_missing_to_physical(no_shrinking):
    with pytest.raises(AssertionError, match="derivative_order=1"):
        check_regularizer(FormerTutorialEnergy)
    with pytest.raises(AssertionError, match="to_physical"):
        check_regularizer_properties(FormerTutorialEnergy, max_examples=10)


@pytest.mark.parametrize("name", REGULARIZERS.available())
def test_every_builtin_energy_scales_with_its_spacing(name):
    cls = REGULARIZERS.get(name)
    u = torch.randn(2, 3, 7, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spacing = [1.5, 0.8, 2.0]
    for s in (0.5, 3.0):
        factor = spacing_factor(cls, s)
        # only the rigidity penalty mixes first and second derivatives: no one scaling
        assert (factor is None) == (name == "rigidity"), f"{name}: derivative_order"
        if factor is None:
            continue
        reg = cls()
        rescaled = reg(u, None, [h * s for h in spacing])
        assert torch.allclose(rescaled, factor * reg(u, None, spacing), rtol=1e-9), name
    assert spacing_factor(REGULARIZERS.get("curvature"), 2.0) == 0.25
    assert spacing_factor(REGULARIZERS.get("diffusion"), 2.0) == 1.0
