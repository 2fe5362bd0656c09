"""regzoo: physics-inspired regularizers for learning-based image registration.

A hypernetwork conditions a VoxelMorph-style registration network on the parameters of any
registered regularizer, so one trained model lets you choose those parameters at test time.

Every public name is available here: the light ones are imported at once, the training and
test-time API on first use (module ``__getattr__``), so ``import regzoo`` costs torch, not
Lightning or matplotlib. ``regzoo.refine``, ``regzoo.sweep`` and ``regzoo.train`` are functions;
their modules are [`regzoo.refinement`][regzoo.refinement], [`regzoo.sweeping`][regzoo.sweeping] and
[`regzoo.training`][regzoo.training] (the old module paths still import, with a deprecation
warning).
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from regzoo import regularizers
from regzoo._errors import (
    InputError,
    MissingFileError,
    OutputExistsError,
    PluginError,
    RegzooError,
    UnknownNameError,
)
from regzoo.params import ParamSpace, ParamSpec
from regzoo.registry import Registry, load_plugin, load_plugins
from regzoo.regularizers import Regularizer, regularizer
from regzoo.similarity import SIMILARITIES, Similarity, similarity

if TYPE_CHECKING:  # what static checkers see: the same names, typed
    from regzoo.checkpoint import load_model, pretrained
    from regzoo.config import ExperimentConfig, load_config
    from regzoo.data.learn2reg import Learn2RegDataset
    from regzoo.data.phantom import write_phantom_dataset
    from regzoo.evaluation import evaluate_displacements, evaluate_model
    from regzoo.inference import RegistrationResult, choose_parameters, register
    from regzoo.lightning_module import HyperRegistration
    from regzoo.pretrained_models import available_pretrained
    from regzoo.refinement import RefineOptions, refine, refine_field
    from regzoo.registration_model import RegistrationModel
    from regzoo.sweeping import optimize_parameters, sweep
    from regzoo.training import train

# the training and test-time API, imported on first use (``import regzoo`` costs torch, not
# Lightning or matplotlib); ``regzoo.refine``, ``regzoo.sweep`` and ``regzoo.train`` are the
# functions (their modules are regzoo.refinement, regzoo.sweeping and regzoo.training)
_LAZY = {
    "ExperimentConfig": "regzoo.config",
    "load_config": "regzoo.config",
    "RegistrationModel": "regzoo.registration_model",
    "HyperRegistration": "regzoo.lightning_module",
    "load_model": "regzoo.checkpoint",
    "pretrained": "regzoo.checkpoint",
    "available_pretrained": "regzoo.pretrained_models",
    "Learn2RegDataset": "regzoo.data.learn2reg",
    "write_phantom_dataset": "regzoo.data.phantom",
    "RefineOptions": "regzoo.refinement",
    "refine": "regzoo.refinement",
    "refine_field": "regzoo.refinement",
    "RegistrationResult": "regzoo.inference",
    "choose_parameters": "regzoo.inference",
    "register": "regzoo.inference",
    "evaluate_displacements": "regzoo.evaluation",
    "evaluate_model": "regzoo.evaluation",
    "optimize_parameters": "regzoo.sweeping",
    "sweep": "regzoo.sweeping",
    "train": "regzoo.training",
}


def __getattr__(name: str) -> Any:
    """The public API's names, imported from their modules on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'regzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """The package keeps its functions ``refine``, ``sweep`` and ``train`` when the deprecated
    modules of the same names are imported (Python binds a submodule to its parent's
    attribute; here the function stays, and the module is ``sys.modules["regzoo.refine"]``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("pretrained", "refine", "sweep", "train") and isinstance(
            value, types.ModuleType
        ):  # regzoo/pretrained/ is the shipped models' data folder
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "SIMILARITIES",
    "ExperimentConfig",
    "HyperRegistration",
    "InputError",
    "Learn2RegDataset",
    "MissingFileError",
    "OutputExistsError",
    "ParamSpace",
    "ParamSpec",
    "PluginError",
    "RefineOptions",
    "RegistrationModel",
    "RegistrationResult",
    "Registry",
    "Regularizer",
    "RegzooError",
    "Similarity",
    "UnknownNameError",
    "available_pretrained",
    "choose_parameters",
    "evaluate_displacements",
    "evaluate_model",
    "load_config",
    "load_model",
    "load_plugin",
    "load_plugins",
    "optimize_parameters",
    "pretrained",
    "refine",
    "refine_field",
    "register",
    "regularizer",
    "regularizers",
    "similarity",
    "sweep",
    "train",
    "write_phantom_dataset",
]
