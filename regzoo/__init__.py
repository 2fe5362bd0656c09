"""regzoo: physics-inspired regularizers for learning-based image registration.

A hypernetwork conditions a VoxelMorph-style registration network on the parameters of any
registered regularizer, so one trained model lets you choose those parameters at test time.

The light core (parameters, registries, regularizers, similarities, spatial operations) is
imported eagerly; the training and test-time API (``load_model``, ``register``, ``sweep``,
...) is imported on first use, so ``import regzoo`` stays fast.
"""

from importlib import import_module
from typing import Any

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

__version__ = "0.1.0"

_LAZY = {
    "ExperimentConfig": "regzoo.config",
    "load_config": "regzoo.config",
    "HyperRegistration": "regzoo.model",
    "load_model": "regzoo.model",
    "train": "regzoo.train",
    "register": "regzoo.inference",
    "RegistrationResult": "regzoo.inference",
    "choose_parameters": "regzoo.inference",
    "refine": "regzoo.refine",
    "refine_field": "regzoo.refine",
    "evaluate_model": "regzoo.evaluation",
    "evaluate_displacements": "regzoo.evaluation",
    "sweep": "regzoo.sweep",
    "optimize_parameters": "regzoo.sweep",
    "write_phantom_dataset": "regzoo.data.phantom",
    "Learn2RegDataset": "regzoo.data.learn2reg",
}

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
    "RegistrationResult",
    "Registry",
    "Regularizer",
    "RegzooError",
    "Similarity",
    "UnknownNameError",
    "choose_parameters",
    "evaluate_displacements",
    "evaluate_model",
    "load_config",
    "load_model",
    "load_plugin",
    "load_plugins",
    "optimize_parameters",
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


def __getattr__(name: str) -> Any:
    """Import the heavier parts of the API on first access."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'regzoo' has no attribute {name!r}")
