"""Two training runs of one config give bit-identical checkpoints (CPU)."""

import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.config import load_config
from regzoo.training import train


def _tensors(value, prefix=""):
    """Every tensor in a (nested) checkpoint entry, by its path."""
    if torch.is_tensor(value):
        return {prefix: value}
    found = {}
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            found.update(_tensors(item, f"{prefix}/{key}"))
    return found


def test_two_runs_of_one_config_give_bit_identical_checkpoints(tiny_phantom, tmp_path):
    checkpoints = []
    for run in ("a", "b"):
        config = load_config(QUICKSTART, tiny_overrides(tiny_phantom, tmp_path / run))
        state = torch.load(train(config), map_location="cpu", weights_only=True)
        checkpoints.append(state)
    first, second = checkpoints
    weights = first["state_dict"]
    assert weights and weights.keys() == second["state_dict"].keys()
    for key, value in weights.items():
        assert torch.equal(value, second["state_dict"][key]), key
    # the optimizer's moments and the parameter sampler's state too
    for entry in ("optimizer_states", "regzoo"):
        a, b = _tensors(first[entry]), _tensors(second[entry])
        assert a and a.keys() == b.keys(), entry
        for key in a:
            assert torch.equal(a[key], b[key]), f"{entry}{key}"
    assert first["global_step"] == second["global_step"] == 2
