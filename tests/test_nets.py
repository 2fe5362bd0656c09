import pytest
import torch

from regzoo.nets import FiLM, HyperConv, HyperNetwork, RegistrationNet
from regzoo.nets.unet import CONDITIONINGS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_net(ndim=3, **kwargs):
    return RegistrationNet(ndim, enc=[4, 8], dec=[8, 8, 4], hyper_units=[8, 8], **kwargs)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_shapes_in_2d_and_3d_with_padding(ndim, conditioning):
    net = small_net(ndim, num_params=2, conditioning=conditioning)
    shape = (13, 10) if ndim == 2 else (9, 10, 11)
    images = torch.rand(2, 1, *shape)
    out = net(images, images, torch.rand(2, 2))
    assert out.displacement.shape == (2, ndim, *shape)
    assert out.velocity is None


def test_half_resolution_and_integration():
    net = small_net(num_params=1, int_steps=4, int_downsize=2)
    images = torch.rand(1, 1, 16, 16, 16)
    out = net(images, images, torch.rand(1, 1))
    assert out.displacement.shape == out.velocity.shape == (1, 3, 16, 16, 16)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_hypernetwork_output_changes_with_parameters(conditioning):
    net = small_net(num_params=2, conditioning=conditioning)
    with torch.no_grad():
        for p in net.parameters():  # move away from the near-zero flow initialisation
            p.add_(0.05 * torch.randn_like(p))
    images = torch.rand(1, 1, 16, 16, 16)
    a = net(images, images, torch.tensor([[0.0, 0.1]])).displacement
    b = net(images, images, torch.tensor([[1.0, 0.9]])).displacement
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_batch_of_two_parameter_vectors_equals_two_single_calls(conditioning):
    net = small_net(num_params=2, conditioning=conditioning)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moving, fixed = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
    params = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    batched = net(fixed, moving, params).displacement
    singles = torch.cat(
        [net(fixed[i : i + 1], moving[i : i + 1], params[i : i + 1]).displacement for i in range(2)]
    )
    assert torch.allclose(batched, singles, atol=1e-6)


def test_plain_network_has_no_hypernetwork_and_hyper_needs_params():
    plain = small_net(num_params=0)
    assert plain.hypernet is None and plain.num_params == 0
    images = torch.rand(1, 1, 16, 16, 16)
    assert plain(images, images).displacement.shape == (1, 3, 16, 16, 16)
    hyper = small_net(num_params=2)
    with pytest.raises(ValueError, match="needs 'unit_params'"):
        hyper(images, images)
    with pytest.raises(ValueError, match=r"expects parameters of shape \(B, 2\)"):
        hyper(images, images, torch.rand(1, 3))
    with pytest.raises(ValueError, match="must both be"):
        hyper(images, torch.rand(1, 1, 16, 16, 8), torch.rand(1, 2))


def test_hyperconv_matches_plain_conv_when_weights_agree():
    conv = HyperConv(2, 3, 4, embedding_dim=5)
    embedding = HyperNetwork(1, [5])(torch.rand(2, 1))
    x = torch.rand(2, 3, 7, 7)
    out = conv(x, embedding)
    weight = conv.weight_head(embedding).view(2, 4, 3, 3, 3)
    bias = conv.bias_head(embedding)
    for i in range(2):
        ref = torch.nn.functional.conv2d(x[i : i + 1], weight[i], bias[i], padding=1)
        assert torch.allclose(out[i : i + 1], ref, atol=1e-6)


def test_different_parameter_vectors_give_different_kernels_at_initialisation():
    torch.manual_seed(0)
    net = RegistrationNet(3, num_params=2, conditioning="weights")
    soft, stiff = net.hypernet(torch.tensor([[0.0, 0.0], [1.0, 1.0]])).split(1)
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, HyperConv)]
    assert convs, "the hyper network has no HyperConv layer to check"
    for name, module in convs:
        a, b = module.weight_head(soft), module.weight_head(stiff)
        # the parameter-dependent part is a large fraction of each generated kernel
        assert (a - b).norm() > 0.1 * a.norm(), name


def test_film_is_the_identity_at_initialisation_and_modulates_per_sample():
    film = FiLM(embedding_dim=3, channels=2)
    x, embedding = torch.randn(2, 2, 5, 6), torch.randn(2, 3)
    assert torch.equal(film(x, embedding), x)
    with torch.no_grad():
        film.linear.bias.copy_(torch.tensor([1.0, -0.5, 0.25, 2.0]))  # gamma (2), beta (2)
    expected = x * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + torch.tensor([0.25, 2.0]).view(
        1, 2, 1, 1
    )
    assert torch.allclose(film(x, embedding), expected)
    with pytest.raises(ValueError, match="FiLM: expected features"):
        film(torch.randn(2, 3, 4, 4), embedding)


def test_film_network_starts_as_its_plain_backbone():
    """At initialisation a FiLM-conditioned network equals the plain one with the same convs."""
    torch.manual_seed(1)
    film = small_net(num_params=2, conditioning="film")
    torch.manual_seed(1)
    plain = small_net(num_params=0)
    plain.load_state_dict(film.state_dict(), strict=False)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.05 * torch.randn_like(p))
        plain.flow.bias.zero_()  # a conditioned flow layer has no bias (no free translation)
        film.load_state_dict(plain.state_dict(), strict=False)
    images = torch.rand(1, 1, 16, 16, 16)
    expected = plain(images, images).displacement
    for params in ([[0.0, 0.0]], [[1.0, 0.3]]):
        out = film(images, images, torch.tensor(params)).displacement
        assert torch.allclose(out, expected, atol=1e-6)
    # far fewer parameters than generating every kernel
    weights = small_net(num_params=2, conditioning="weights")
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(film) < 0.5 * count(weights)


def test_unknown_conditioning_is_refused():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        small_net(num_params=2, conditioning="attention")
