"""A file-based regzoo plugin: named in a config's ``plugins:`` list, imported at load time.

No package, no entry point: ``plugins: [plugins/file_plugin_example/directional_diffusion.py]``
in a config (or ``regzoo regularizers --plugin <this file>``) registers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from regzoo import ParamSpace, ParamSpec, Regularizer, regularizer
from regzoo.regularizers.functional import to_physical
from regzoo.spatial import Spacing, gradient


@regularizer("directional_diffusion")
class DirectionalDiffusion(Regularizer):
    """Diffusion with a separate weight for derivatives along the last axis.

    ``R(u; w) = mean_x( sum_{i < D-1} sum_j (d_i u_j)^2 + w * sum_j (d_{D-1} u_j)^2 )``

    - ``axial_weight`` (``w``): smoothness along the last (cranio-caudal) axis relative to the
      others; small values let sliding-like motion vary quickly along that axis.
    """

    space = ParamSpace.of(
        ParamSpec(
            name="axial_weight",
            low=0.01,
            high=1.0,
            default=1.0,
            scale="log",
            domain=(0.0, None),
            description="weight of derivatives along the last axis",
        ),
    )
    quadratic = True  # R(c u) = c^2 R(u): checked by regzoo.testing

    def energy(self, u: torch.Tensor, params: Mapping[str, Any], spacing: Spacing) -> torch.Tensor:
        # derivatives per mm when a spacing is given: the displacement in mm, divided by mm
        jac = gradient(to_physical(u, spacing), spacing).pow(2).sum(dim=1)  # (B, D, *s)
        weight = torch.as_tensor(params["axial_weight"], dtype=u.dtype, device=u.device)
        axial = jac[:, -1].flatten(1).mean(1)
        others = jac[:, :-1].sum(dim=1).flatten(1).mean(1)
        return others + weight * axial
