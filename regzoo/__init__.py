"""regzoo: physics-inspired regularizers for learning-based image registration.

A hypernetwork conditions a VoxelMorph-style registration network on the parameters of any
registered regularizer, so one trained model lets you choose those parameters at test time.
"""

from regzoo import regularizers
from regzoo._errors import PluginError, RegzooError
from regzoo.params import ParamSpace, ParamSpec
from regzoo.registry import Registry, load_plugin, load_plugins
from regzoo.regularizers import Regularizer, regularizer
from regzoo.similarity import SIMILARITIES, Similarity, similarity

__version__ = "0.1.0"

__all__ = [
    "SIMILARITIES",
    "ParamSpace",
    "ParamSpec",
    "PluginError",
    "Registry",
    "Regularizer",
    "RegzooError",
    "Similarity",
    "__version__",
    "load_plugin",
    "load_plugins",
    "regularizer",
    "regularizers",
    "similarity",
]
