import pytest
import torch
import torch.nn.functional as F

from regzoo.similarity import LNCC, MSE, NGF, SIMILARITIES, WeightedSum, box_filter


def textured(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, *(s // 2 for s in shape), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=shape, mode=mode, align_corners=False)


@pytest.mark.parametrize("shape", [(32, 30), (20, 18, 16)])
def test_lncc_self_is_optimum_and_affine_invariant(shape):
    lncc = LNCC()
    image = textured(shape)
    self_loss = lncc(image, image)
    assert self_loss.shape == (1,)
    assert self_loss.item() == pytest.approx(-1.0, abs=1e-2)
    other = textured(shape, seed=1)
    assert lncc(image, other).item() > self_loss.item() + 0.5
    assert lncc(image, 0.5 * image + 0.25).item() > self_loss.item()  # still good ...
    assert lncc(image, 3.0 * image - 2.0).item() == pytest.approx(self_loss.item(), abs=1e-3)


def test_lncc_constant_patches_are_finite():
    lncc = LNCC()
    const = torch.ones(2, 1, 12, 12, 12, requires_grad=True)
    loss = lncc(const, const.detach() * 2)
    assert torch.isfinite(loss).all() and loss.abs().max() < 1e-6
    loss.sum().backward()
    assert const.grad is not None and torch.isfinite(const.grad).all()


def test_separable_box_filter_matches_dense_convolution():
    x = torch.randn(1, 2, 11, 12, 13, dtype=torch.float64)
    dense = F.conv3d(x, torch.ones(2, 1, 5, 5, 5, dtype=torch.float64) / 125, padding=2, groups=2)
    assert torch.allclose(box_filter(x, 5), dense)
    with pytest.raises(ValueError, match="positive odd integer"):
        box_filter(x, 4)


def test_mse_and_registry():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.ones(2, 1, 4, 4)
    assert torch.allclose(MSE()(a, b), torch.ones(2))
    assert {"lncc", "mse"} <= set(SIMILARITIES.available())
    with pytest.raises(ValueError, match="differ"):
        MSE()(a, torch.ones(2, 1, 4, 5))
    with pytest.raises(KeyError, match="did you mean 'lncc'"):
        SIMILARITIES.get("lnc")


@pytest.mark.parametrize("shape", [(16, 12), (8, 12, 10)])
def test_multiscale_averages_the_similarity_over_pooled_images(shape):
    from regzoo.similarity import MultiScale

    fixed, warped = textured(shape), textured(shape, seed=1)
    assert torch.equal(MultiScale(MSE(), [1])(fixed, warped), MSE()(fixed, warped))
    # images constant on 2^D blocks pool to their block values: MSE unchanged at scale 2
    blocky = [F.interpolate(x, scale_factor=2, mode="nearest") for x in (fixed, warped)]
    expected = MSE()(fixed, warped)
    assert torch.allclose(MultiScale(MSE(), [1, 2])(*blocky), expected, atol=1e-6)
    # a multi-scale LNCC keeps the optimum of its terms and its shape (B,)
    both = torch.cat([fixed, warped])
    value = MultiScale(LNCC(window=3), [1, 2, 4])(both, both)
    assert value.shape == (2,) and torch.allclose(value, torch.full((2,), -1.0), atol=2e-2)


def test_multiscale_rejects_bad_scales_and_is_configured_by_scales():
    from regzoo.config import ConfigError, load_config
    from regzoo.resolve import build_objective
    from regzoo.similarity import MultiScale

    with pytest.raises(ValueError, match="scales must be positive integers"):
        MultiScale(MSE(), [0])
    base = {"regularizers": [{"name": "linear_elastic"}], "trainer": {"max_steps": 5}}
    assert isinstance(build_objective(load_config(base)).similarity, LNCC)
    config = load_config({**base, "similarity": {"name": "lncc", "scales": [1, 2, 4]}})
    similarity = build_objective(config).similarity
    assert isinstance(similarity, MultiScale) and similarity.scales == (1, 2, 4)
    with pytest.raises(ConfigError, match=r"similarity\.scales"):
        load_config({**base, "similarity": {"scales": [0]}})


@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 8)])
def test_weighted_sum_is_the_weighted_sum_of_its_terms(shape):

    fixed, warped = textured(shape), textured(shape, seed=1)
    lncc, ngf = LNCC(window=5), NGF()
    both = WeightedSum([(1.0, lncc), (0.5, WeightedSum([(3.0, ngf)]))])  # nested: flattened
    assert both.items() == [(1.0, lncc), (1.5, ngf)]
    expected = lncc(fixed, warped) + 1.5 * ngf(fixed, warped)
    assert torch.allclose(both(fixed, warped), expected)
    assert both.radius == 2  # the widest term's (LNCC 5: 2, NGF: 1)
    for bad in ([], [(0.0, lncc)], [(float("inf"), lncc)], [(1.0, "lncc")]):
        with pytest.raises(ValueError, match="WeightedSum"):
            WeightedSum(bad)  # type: ignore[arg-type]  # deliberately malformed


def test_parse_similarity_reads_names_weights_options_and_the_model():
    from regzoo._errors import InputError, UnknownNameError
    from regzoo.similarity import MINDSSC, NGF, MultiScale, WeightedSum, parse_similarity

    trained = MultiScale(LNCC(), [1, 2])
    assert isinstance(parse_similarity("mind_ssc"), MINDSSC)
    assert parse_similarity("model", trained=trained) is trained
    ten = parse_similarity(" 10 * mind_ssc ")
    assert isinstance(ten, WeightedSum) and ten.items()[0][0] == 10.0
    combined = parse_similarity("model + 0.75*ngf:eta=0.05", trained=trained)
    assert isinstance(combined, WeightedSum)
    (w1, s1), (w2, s2) = combined.items()
    assert (w1, s1, w2) == (1.0, trained, 0.75)
    assert isinstance(s2, NGF) and s2.options.eta == 0.05
    lncc = parse_similarity("lncc:window=5")
    assert isinstance(lncc, LNCC) and lncc.options.window == 5
    small = parse_similarity("1e-3*ngf:eta=1e+2,eps=1e-9 + 2e+0 * mse")
    assert isinstance(small, WeightedSum)
    assert [w for w, _ in small.items()] == [1e-3, 2.0]
    first = small.items()[0][1]
    assert isinstance(first, NGF) and first.options.eta == 100.0
    for bad, message in [
        ("", "each term is"),
        ("x*ngf", "positive WEIGHT"),
        ("-1*ngf", "positive WEIGHT"),
        ("ngf + ", "each term is"),
        ("ngf:eta", "not KEY=VALUE"),
        ("ngf:eta=-1", "greater than 0"),
        ("model", "needs a model"),
        ("lncc:window=4", "window must be odd"),
        ("lncc:window=5*2", "valid integer"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_similarity(bad)
    with pytest.raises(UnknownNameError, match="did you mean 'mind_ssc'"):
        parse_similarity("model + mind", trained=trained)


@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 8)])
@pytest.mark.parametrize("name", ["lncc", "mse", "mind_ssc", "ngf", "mi", "multiscale", "sum"])
def test_bind_fixed_gives_the_loss_and_its_gradient(name, shape):
    from regzoo.similarity import MultiScale, parse_similarity

    similarity = {
        "multiscale": lambda: MultiScale(LNCC(window=5), [1, 2]),
        "sum": lambda: parse_similarity("lncc:window=5 + 0.5*ngf + 2*mind_ssc"),
    }.get(name, lambda: SIMILARITIES.get(name)())()
    fixed = textured(shape)
    warped = (textured(shape, seed=1) * 0.5 + fixed).requires_grad_(True)
    expected = similarity(fixed, warped)
    (grad,) = torch.autograd.grad(expected.sum(), warped)
    bound = similarity.bind_fixed(fixed)
    value = bound(warped)
    (bound_grad,) = torch.autograd.grad(value.sum(), warped)
    assert torch.allclose(value, expected, atol=1e-6)
    assert torch.allclose(bound_grad, grad, atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        bound(warped[..., 1:])
