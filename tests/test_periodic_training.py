"""A periodic parameter (an angle) conditions the network through its (cos, sin) features."""

from __future__ import annotations

import math
import textwrap

import torch
from conftest import tiny_overrides

from regzoo.checkpoint import load_model
from regzoo.config import load_config
from regzoo.training import train

PLUGIN = textwrap.dedent(
    '''
    import math

    import torch

    from regzoo import ParamSpace, ParamSpec, regularizer
    from regzoo.regularizers import Regularizer, functional
    from regzoo.spatial import gradient


    @regularizer("oriented_diffusion")
    class OrientedDiffusion(Regularizer):
        """Diffusion plus a penalty on the derivative along a direction in the first two axes,
        at angle ``theta`` (a direction: theta and theta + pi are the same)."""

        space = ParamSpace.of(
            ParamSpec(name="theta", low=0.0, high=math.pi, default=0.0, scale="periodic")
        )

        def energy(self, u, params, spacing):
            grad = gradient(u, spacing)  # (B, D, D, ...)
            theta = params["theta"].reshape(-1, *[1] * (grad.ndim - 1))
            along = torch.cos(theta) * grad[:, :, :1] + torch.sin(theta) * grad[:, :, 1:2]
            directional = along.pow(2).flatten(1).mean(1)
            return functional.diffusion_energy(u, spacing) + directional
    '''
)


def test_a_periodic_parameter_trains_and_conditions_on_its_features(
    tiny_phantom, tmp_path, clean_registries
):
    plugin = tmp_path / "oriented.py"
    plugin.write_text(PLUGIN)
    config = load_config(
        {
            "plugins": [str(plugin)],
            "regularizers": [{"name": "oriented_diffusion"}],
            "model": {"int_steps": 0},
        },
        tiny_overrides(tiny_phantom, tmp_path / "run"),
    )
    checkpoint = train(config)
    model = load_model(checkpoint, plugins=[str(plugin)])
    space = model.space
    assert space.names == ["oriented_diffusion.theta"]
    assert (len(space), space.feature_size) == (1, 2)
    assert model.net.num_params == 2  # the network sees (cos, sin), not the raw phase
    fixed = torch.rand(1, 1, 32, 32, 32)
    moving = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        low = model.predict(fixed, moving, torch.tensor([[0.0]])).displacement
        high = model.predict(fixed, moving, torch.tensor([[math.pi - 1e-6]])).displacement
        middle = model.predict(fixed, moving, torch.tensor([[math.pi / 2]])).displacement
    # both ends of the period are one setting: the same field
    assert torch.allclose(low, high, atol=1e-5)
    assert not torch.allclose(low, middle, atol=1e-7)


def test_the_curriculum_shrinks_a_periodic_range_the_short_way_round(tmp_path, clean_registries):
    from regzoo.lightning_module import HyperRegistration

    plugin = tmp_path / "oriented.py"
    plugin.write_text(PLUGIN)
    config = load_config(
        {
            "plugins": [str(plugin)],
            "regularizers": [{"name": "oriented_diffusion"}],
            "sampling": {"curriculum_steps": 100},
            "trainer": {"max_steps": 100},
        }
    )
    module = HyperRegistration(config)
    theta = module._draw_parameters(256, step=10)[:, 0]  # 10% of the period around 0
    distance = torch.minimum(theta, math.pi - theta)  # circular distance to the default 0
    assert float(distance.max()) <= 0.05 * math.pi + 1e-4
    assert float(theta.max()) > math.pi / 2  # some draws lie just below the period's end
