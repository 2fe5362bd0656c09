"""No free translation: a conditioned network adds no parameter-chosen constant to its field.

The flow layer of a conditioned network has no bias (generated or not) and its FiLM no shift:
either would be a spatially constant vector, a translation the parameters choose rather than
the images, which no regularizer sees (issue 31).
"""

import itertools

import pytest
import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.nets import RegistrationNet
from regzoo.nets.unet import CONDITIONINGS, drop_flow_shift

SELF_PAIRS_LIMIT = 0.3
"""Largest mean |u| (voxels) over a 5 x 5 grid for F -> F of a tiny model trained 80 steps with
``data.self_pairs=0.5``: measured 0.14 (film) and 0.10 (weights), against 0.6-1.4 voxels
without self pairs (40 and 150 steps). A tiny model this short cannot show ~0: it has not yet learned to compare
its two images (its field for a real pair is no larger, 0.13 and 0.11 voxels)."""


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_the_flow_layer_maps_zero_features_to_zero_at_every_setting(conditioning):
    """Whatever the weights, zero features give a zero field: no constant term is left."""
    torch.manual_seed(0)
    net = RegistrationNet(3, enc=[4, 8], dec=[8, 8, 4], hyper_units=[8, 8], num_params=2,
                          conditioning=conditioning)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():  # trained-looking weights, far from the initialisation
            p.add_(0.5 * torch.randn_like(p))
    params = torch.tensor(list(itertools.product([0.0, 0.5, 1.0], repeat=2)))
    assert net.hypernet is not None
    embedding = net.hypernet(params)
    features = torch.zeros(len(params), net.unet.out_channels, 4, 4, 4)
    flow = net.flow(features, embedding if conditioning == "weights" else None)
    if net.flow_film is not None:
        flow = net.flow_film(flow, embedding)
    assert torch.equal(flow, torch.zeros_like(flow))
    names = [k for k in net.state_dict() if k.startswith("flow")]
    assert not any("bias_head" in k or k == "flow.bias" for k in names), names


def _train(tiny_phantom, run_dir, conditioning, steps, *extra):
    """The quickstart with the plain (not antisymmetric) network, whose F -> F these tests
    measure (the antisymmetric one's is 0 by construction: tests/test_symmetric.py)."""
    overrides = [*tiny_overrides(tiny_phantom, run_dir, steps=steps), "model.symmetric=false",
                 *extra,
                 f"model.conditioning={conditioning}", "trainer.check_val_every_n_epoch=1000",
                 "logging.image_every_n_steps=1000"]  # fmt: skip
    assert main(["train", str(QUICKSTART), *[a for o in overrides for a in ("--set", o)]]) == 0
    return run_dir / "checkpoints" / "last.ckpt"


def _largest_self_motion(checkpoint, data_root):
    """The largest mean |u| (voxels) of F -> F over a 5 x 5 grid of the trained range."""
    from regzoo.data.learn2reg import Learn2RegDataset

    model = load_model(checkpoint)
    image = Learn2RegDataset(data_root, "val")[0]["fixed"][None]
    axes = {spec.name: spec.spaced(spec.low, spec.high, 5) for spec in model.space}
    worst = 0.0
    for combo in itertools.product(*axes.values()):
        values = model.parameter_tensor(dict(zip(axes, combo, strict=True)), 1)
        with torch.no_grad():
            field = model(image, image, values).displacement
        worst = max(worst, float(field.norm(dim=1).mean()))
    return worst


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_self_pairs_teach_a_tiny_model_to_leave_an_image_registered_to_itself_in_place(
    tiny_phantom, tmp_path, conditioning
):
    """Without the flow shift a network still adds the data set's average motion to an image
    registered to itself; training on self pairs (u = 0 is their optimum) removes it."""
    plain = _train(tiny_phantom, tmp_path / "plain", conditioning, steps=80)
    taught = _train(tiny_phantom, tmp_path / "self", conditioning, 80, "data.self_pairs=0.5")
    without, with_self_pairs = (_largest_self_motion(c, tiny_phantom) for c in (plain, taught))
    assert with_self_pairs <= SELF_PAIRS_LIMIT, with_self_pairs
    assert with_self_pairs <= 0.5 * without, (with_self_pairs, without)


def test_an_older_checkpoint_loads_without_its_flow_shift(tiny_phantom, tmp_path):
    checkpoint = _train(tiny_phantom, tmp_path / "run", "film", steps=2)
    state = torch.load(checkpoint, weights_only=True)
    weights = state["state_dict"]
    scale = weights["net.flow_film.linear.weight"].clone()
    # the layout before issue 31: a flow bias, and FiLM rows for the scale then the shift
    weights["net.flow.bias"] = torch.ones(3)
    for name in ("weight", "bias"):
        key = f"net.flow_film.linear.{name}"
        weights[key] = torch.cat([weights[key], torch.ones_like(weights[key])])
    state["regzoo"].pop("weights_sha256")  # older checkpoints have no weights fingerprint either
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.warns(UserWarning, match="older checkpoint; its flow layer's bias and shift"):
        model = load_model(old)
    assert model.net.flow_film is not None
    assert torch.equal(model.net.flow_film.linear.weight, scale)
    today = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert drop_flow_shift(today) == (today, False)  # today's layout is left alone
    plain = {"net.flow.weight": torch.zeros(3, 4, 3, 3, 3), "net.flow.bias": torch.ones(3)}
    assert drop_flow_shift(plain) == (plain, False)  # a plain network keeps its bias
