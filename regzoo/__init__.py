"""regzoo: physics-inspired regularizers for learning-based image registration.

A hypernetwork conditions a VoxelMorph-style registration network on the parameters of any
registered regularizer, so one trained model lets you choose those parameters at test time.

Every public name is imported here, explicitly (as torchio and timm do): ``regzoo.refine``,
``regzoo.sweep`` and ``regzoo.train`` are the functions, whichever submodules were imported
before (the submodules stay importable by their full names, ``from regzoo.refine import ...``).
"""

from regzoo import (
    lung_similarity,  # noqa: F401  (registers the similarities mind_ssc, ngf, mi)
    regularizers,
)
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

# the training and test-time API; each function is bound AFTER its module is imported, so the
# name is the function, not the submodule of the same name
from regzoo.config import ExperimentConfig, load_config  # isort: skip
from regzoo.model import HyperRegistration, load_model  # isort: skip
from regzoo.data.learn2reg import Learn2RegDataset  # isort: skip
from regzoo.data.phantom import write_phantom_dataset  # isort: skip
from regzoo.refine import refine, refine_field  # isort: skip
from regzoo.inference import RegistrationResult, choose_parameters, register  # isort: skip
from regzoo.evaluation import evaluate_displacements, evaluate_model  # isort: skip
from regzoo.sweep import optimize_parameters, sweep  # isort: skip
from regzoo.train import train  # isort: skip

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
