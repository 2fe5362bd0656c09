"""An antisymmetric network (``model.symmetric``): an image registered to itself does not move.

``u(F, M) = (g(F, M) - g(M, F)) / 2`` with both orders in one batched forward, so ``u(F, F)``
is exactly zero at every parameter setting, whatever the weights (issue 31).
"""

import hashlib
import itertools
import json

import pytest
import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.checkpoint import MODEL_SECTIONS, config_digest, load_model
from regzoo.config import load_config
from regzoo.nets import RegistrationNet
from regzoo.nets.unet import CONDITIONINGS
from regzoo.registration_model import RegistrationModel
from regzoo.training import train

SHAPES = {2: (21, 26), 3: (11, 14, 13)}  # odd sizes: the input is padded, the output cropped
FLOWS = [(0, 1), (0, 2), (5, 1), (5, 2)]  # (int_steps, int_downsize)


def _random_net(ndim, conditioning, int_steps, int_downsize, seed):
    torch.manual_seed(seed)
    net = RegistrationNet(ndim, enc=[4, 8], dec=[8, 8, 4], hyper_units=[8, 8], num_params=2,
                          conditioning=conditioning, int_steps=int_steps,
                          int_downsize=int_downsize, symmetric=True)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():  # far from the initialisation (the flow layer starts ~0)
            p.normal_(0.0, 0.3)
    return net


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize(("int_steps", "int_downsize"), FLOWS)
def test_an_image_registered_to_itself_gets_exactly_zero_at_every_setting(
    ndim, conditioning, int_steps, int_downsize
):
    grid = torch.tensor(list(itertools.product([0.0, 0.3, 0.7, 1.0], repeat=2)))
    for seed in range(3):  # several random weight settings
        net = _random_net(ndim, conditioning, int_steps, int_downsize, seed)
        image = torch.randn(len(grid), 1, *SHAPES[ndim])
        with torch.no_grad():
            out = net(image, image, grid)
            moved = net(image, torch.randn_like(image), grid).displacement
        assert torch.equal(out.displacement, torch.zeros_like(out.displacement))
        if int_steps:
            assert out.velocity is not None
            assert torch.equal(out.velocity, torch.zeros_like(out.velocity))
        assert moved.abs().max() > 1e-3  # a real pair does move: the zero is not trivial


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize(("int_steps", "int_downsize"), FLOWS)
def test_swapping_the_images_negates_the_field(ndim, conditioning, int_steps, int_downsize):
    """u(M, F) = -u(F, M): the displacement, or for a diffeomorphic model the velocity (its
    displacement is then the inverse transformation's)."""
    net = _random_net(ndim, conditioning, int_steps, int_downsize, seed=1)
    fixed, moving = torch.randn(2, 2, 1, *SHAPES[ndim])
    params = torch.rand(2, 2)
    with torch.no_grad():
        there, back = net(fixed, moving, params), net(moving, fixed, params)
    field = (lambda o: o.velocity) if int_steps else (lambda o: o.displacement)
    assert field(there).abs().max() > 1e-3
    torch.testing.assert_close(field(back), -field(there), rtol=0, atol=1e-6)


def test_the_plain_network_is_antisymmetric_too():
    torch.manual_seed(0)
    net = RegistrationNet(3, enc=[4, 8], dec=[8, 8, 4], symmetric=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
        fixed, moving = torch.randn(2, 1, 1, 16, 16, 16)
        assert torch.equal(net(fixed, fixed).displacement, torch.zeros(1, 3, 16, 16, 16))
        torch.testing.assert_close(
            net(moving, fixed).displacement, -net(fixed, moving).displacement, rtol=0, atol=1e-6
        )


def test_an_unset_symmetric_keeps_the_digest_of_older_checkpoints():
    """Checkpoints written before ``model.symmetric`` existed store a digest of a model section
    without it: a config that leaves it at false digests the same, one that sets it does not."""
    config = load_config(QUICKSTART, ["model.symmetric=false"])  # the quickstart sets it
    data = config.model_dump(mode="json")
    data["model"].pop("symmetric")
    fixed = {k: data.get(k) for k in MODEL_SECTIONS if k != "plugins"}
    older = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]
    assert config_digest(config) == older
    assert config_digest(load_config(QUICKSTART, ["model.symmetric=true"])) != older
    assert not RegistrationModel(config).net.symmetric


def test_a_symmetric_model_trains_and_leaves_an_image_registered_to_itself_in_place(
    tiny_phantom, tmp_path
):
    config = load_config(
        QUICKSTART,
        [
            *tiny_overrides(tiny_phantom, tmp_path / "run"),
            "model.symmetric=true",
            "data.batch_size=2",
        ],
    )
    model = load_model(train(config))
    assert model.net.symmetric and model.config.model.symmetric
    trained = dict(model.net.named_parameters())["flow.weight"]
    assert trained.abs().max() > 0
    from regzoo.data.learn2reg import Learn2RegDataset

    item = Learn2RegDataset(tiny_phantom, "val")[0]
    image, moving = item["fixed"][None], item["moving"][None]
    axes = {spec.name: spec.spaced(spec.low, spec.high, 3) for spec in model.space}
    for combo in itertools.product(*axes.values()):
        setting = dict(zip(axes, combo, strict=True))
        with torch.no_grad():
            assert torch.equal(
                model(image, image, setting).displacement, torch.zeros(1, 3, 32, 32, 32)
            )
            there = model(image, moving, setting).displacement
            back = model(moving, image, setting).displacement
        torch.testing.assert_close(back, -there, rtol=0, atol=1e-6)
