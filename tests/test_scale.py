"""Speed options: bf16 mixed precision, torch.compile, streaming data."""

import pytest
import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.checkpoint import load_model
from regzoo.config import ConfigError, load_config
from regzoo.data.datamodule import RegistrationDataModule
from regzoo.nets import RegistrationNet
from regzoo.registration_model import RegistrationModel
from regzoo.training import train

TINY_NET = ["model.enc=[4]", "model.dec=[4, 4]", "model.hyper_units=[4]"]


def test_flow_layer_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    net = RegistrationNet(3, enc=[4, 8], dec=[8, 8, 4], num_params=2, hyper_units=[8])
    moving, fixed, params = (
        torch.rand(2, 1, 16, 16, 16),
        torch.rand(2, 1, 16, 16, 16),
        torch.rand(2, 2),
    )
    reference = net(moving, fixed, params).displacement
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(moving, fixed, params).displacement
    # the body runs in bf16, the displacement (warp coordinates, finite differences) in fp32
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, reference, rtol=0.05, atol=0.05 * reference.abs().max().item())


def test_compile_is_a_validated_option():
    assert load_config(QUICKSTART, ["model.compile=true"]).model.compile is True
    assert load_config(QUICKSTART).model.compile is False
    with pytest.raises(ConfigError, match=r"model\.compile"):
        load_config(QUICKSTART, ["model.compile=sometimes"])


def test_compiled_bf16_training_writes_a_plain_checkpoint(tiny_phantom, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_overrides(tiny_phantom, run_dir, steps=1),
        *TINY_NET,
        "model.compile=true",
        "trainer.precision=bf16-mixed",
    ]
    checkpoint = train(load_config(QUICKSTART, overrides))
    model = load_model(checkpoint)  # the keys of an uncompiled model: compile is training-only
    plain = RegistrationModel(load_config(QUICKSTART, TINY_NET))
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert model.net._compiled_call_impl is None


def test_training_streams_from_disk(tiny_phantom):
    """Without ``data.cache`` (the library's default; the quickstart caches its 16 small
    volumes) every pair is read when it is used and nothing is kept."""
    config = load_config(QUICKSTART, [f"data.root={tiny_phantom}", "data.cache=false"]).data
    data = RegistrationDataModule(config)
    data.setup("fit")
    next(iter(data.train_dataloader()))
    assert data.train_set.cache is False and not data.train_set._cache
    cached = load_config(QUICKSTART, [f"data.root={tiny_phantom}"]).data
    assert cached.cache and type(cached).model_fields["cache"].default is False


@pytest.mark.parametrize("out_channels", [4, 3])
def test_cpu_conv_routing_is_the_same_convolution(out_channels):
    from regzoo.nets.hyper import _conv3d_cpu_fast

    torch.manual_seed(0)
    x = torch.randn(1, 5, 12, 10, 9, dtype=torch.float32, requires_grad=True)
    w = torch.randn(out_channels, 5, 3, 3, 3, requires_grad=True)
    b = torch.randn(out_channels, requires_grad=True)
    for stride in (1, 2):
        fast = _conv3d_cpu_fast(x, w, b, stride, 1)
        reference = torch.nn.functional.conv3d(x, w, b, stride=stride, padding=1)
        assert fast.shape == reference.shape
        assert torch.allclose(fast, reference, atol=1e-4)
        grads = torch.autograd.grad(fast.square().sum(), (x, w, b))
        expected = torch.autograd.grad(reference.square().sum(), (x, w, b))
        for g, e in zip(grads, expected, strict=True):
            assert torch.allclose(g, e, rtol=1e-4, atol=1e-3)
