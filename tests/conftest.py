"""Shared fixtures: a tiny phantom data set and a model trained on it for two steps."""

from pathlib import Path
from typing import Any

import pytest

from regzoo.config import load_config
from regzoo.data.phantom import write_phantom_dataset
from regzoo.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def tiny_overrides(data_root: Path, run_dir: Path, steps: int = 2) -> list[str]:
    """Overrides that make any config train a few steps on the tiny phantom."""
    return [
        f"data.root={data_root}",
        f"run_dir={run_dir}",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=null",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "data.batch_size=1",
        "data.num_workers=0",
        "logging.image_every_n_steps=1",
        "sampling.curriculum_steps=0",  # the whole range from the first step
    ]


FOUR_DECADES = [
    "regularizers.0.params.lam={low: 0.01, high: 100.0, scale: log}",
    "regularizers.0.params.mu={low: 0.01, high: 100.0, scale: log}",
]
"""The linear-elastic term's declared range, for models that tests sweep over four decades."""


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A 3-case 32^3 phantom (2 training pairs, 1 validation pair)."""
    root = tmp_path_factory.mktemp("data") / "phantom"
    return write_phantom_dataset(root, n=3, val=1, shape=(32, 32, 32), seed=7, progress=False)


@pytest.fixture(scope="session")
def tiny_phantom_2d(tmp_path_factory) -> Path:
    """A 4-case 32x32 coronal-slice phantom (3 training pairs, 1 validation pair)."""
    root = tmp_path_factory.mktemp("data2d") / "phantom"
    return write_phantom_dataset(root, n=4, val=1, shape=(32, 32), seed=7, progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_phantom, tmp_path_factory) -> Path:
    """The quickstart config, over the declared four decades, trained for 2 steps on the tiny
    phantom, with the plain (not antisymmetric) network: after 2 steps an antisymmetric
    network's two halves nearly cancel (fields of ~0.005 voxels), too little for the tests of
    what a field does; tests/test_symmetric.py trains the quickstart's antisymmetric one."""
    from regzoo.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "quickstart"
    overrides = [*tiny_overrides(tiny_phantom, run_dir), *FOUR_DECADES, "model.symmetric=false"]
    config = load_config(QUICKSTART, overrides)
    return train(config)


@pytest.fixture
def no_shrinking():
    """Report hypothesis's first failing example instead of shrinking it (fast tests of the
    checks themselves)."""
    hypothesis = pytest.importorskip("hypothesis")
    hypothesis.settings.register_profile(
        "regzoo-no-shrink", phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate]
    )
    previous = hypothesis.settings.get_current_profile_name()
    hypothesis.settings.load_profile("regzoo-no-shrink")
    yield
    hypothesis.settings.load_profile(previous)


@pytest.fixture
def clean_registries():
    """Only the built-in regularizers, similarities and criteria during a test, and afterwards
    exactly the registrations from before it: what a test's code registers does not leak."""
    from regzoo.criteria import CRITERIA
    from regzoo.regularizers import REGULARIZERS
    from regzoo.similarity import SIMILARITIES

    registries: list[Registry[Any]] = [REGULARIZERS, SIMILARITIES, CRITERIA]
    saved = []
    for registry in registries:
        registry.available()  # entry points discovered now, not during the test
        saved.append((registry, dict(registry._items), dict(registry._failed)))
        registry._items = {
            k: v for k, v in registry._items.items() if v.__module__.startswith("regzoo.")
        }
    yield
    for registry, items, failed in saved:
        registry._items, registry._failed = items, failed


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--soak-calls N``: register calls in the soak test (tests/test_soak.py)."""
    parser.addoption(
        "--soak-calls",
        type=int,
        default=None,
        help="register() calls in the soak test (default 200, or $REGZOO_SOAK_CALLS; "
        "2000 for the full soak)",
    )
