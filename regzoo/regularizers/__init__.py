"""Regularizers: energies of a displacement field, each with a declared parameter space.

Examples:
    >>> import torch, regzoo
    >>> reg = regzoo.regularizers.get("linear_elastic")()
    >>> u = torch.zeros(2, 3, 8, 8, 8)
    >>> reg(u, {"lam": 0.1, "mu": torch.tensor([0.1, 0.5])}).shape
    torch.Size([2])
"""

from regzoo.regularizers import functional
from regzoo.regularizers.base import REGULARIZERS, NoOptions, Regularizer, regularizer
from regzoo.regularizers.builtin import (
    BendingEnergy,
    Curvature,
    Diffusion,
    Hyperelastic,
    JacobianPenalty,
    LinearElastic,
    NeoHookean,
    RigidityPenalty,
    Sliding,
    StVenantKirchhoff,
    TotalVariation,
)

get = REGULARIZERS.get
"""The regularizer class registered under a name (`REGULARIZERS.get`)."""
available = REGULARIZERS.available
"""The registered regularizer names, sorted (`REGULARIZERS.available`)."""

__all__ = [
    "REGULARIZERS",
    "BendingEnergy",
    "Curvature",
    "Diffusion",
    "Hyperelastic",
    "JacobianPenalty",
    "LinearElastic",
    "NeoHookean",
    "NoOptions",
    "Regularizer",
    "RigidityPenalty",
    "Sliding",
    "StVenantKirchhoff",
    "TotalVariation",
    "available",
    "functional",
    "get",
    "regularizer",
]
