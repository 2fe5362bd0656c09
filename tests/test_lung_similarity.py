"""MIND-SSC, NGF and Parzen mutual information against analytic cases, 2D and 3D."""

import math

import pytest
import torch
import torch.nn.functional as F

from regzoo.config import load_config
from regzoo.resolve import build_objective
from regzoo.similarity import (
    MI,
    MINDSSC,
    NGF,
    SIMILARITIES,
    mind_ssc,
    mutual_information,
    normalized_gradient,
    ssc_offsets,
)
from regzoo.testing import check_similarity_properties

SHAPES = [(24, 22), (14, 13, 12)]


def textured(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, *(max(2, s // 3) for s in shape), generator=g, dtype=dtype)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(noise, size=shape, mode=mode, align_corners=False)


def ramp(shape, dtype=torch.float64):
    """An image that varies along the first axis only (a sine: not monotone)."""
    x = torch.arange(shape[0], dtype=dtype)
    profile = torch.sin(0.7 * x) + 0.3 * x
    return profile.view(1, 1, -1, *[1] * (len(shape) - 1)).expand(1, 1, *shape).contiguous()


def test_registered_and_usable_in_a_config(tmp_path):
    assert {"mind_ssc", "ngf", "mi"} <= set(SIMILARITIES.available())
    for name in ("mind_ssc", "ngf", "mi"):
        config = load_config(
            "configs/quickstart.yaml",
            [f"similarity.name={name}", "similarity.options={}", "similarity.scales=[1]"],
        )
        assert type(build_objective(config).similarity).registered_name == name


@pytest.mark.parametrize("shape", SHAPES)
def test_mind_ssc_of_an_image_and_its_inverted_copy_are_equal(shape):
    image = textured(shape)
    descriptors = mind_ssc(image)
    pairs = 12 if len(shape) == 3 else 4
    assert descriptors.shape == (1, pairs, *shape)
    assert bool((descriptors > 0).all() and (descriptors <= 1).all())
    # the SSD of intensity differences ignores sign, offset and (after normalisation) scale
    for transformed in (-image, 1000 - 3 * image, 0.01 * image - 5):
        assert torch.allclose(mind_ssc(transformed), descriptors, atol=1e-10)
    loss = MINDSSC()
    assert loss(image, -image).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(image, torch.roll(image, 2, dims=2)).item() > 1e-3


def test_mind_ssc_pairs_are_the_self_similarity_context():
    assert len(ssc_offsets(3, 2)) == 12 and len(ssc_offsets(2, 1)) == 4
    for p, q in ssc_offsets(3, 2):
        # two different axis neighbours at distance 2, sqrt(2) * 2 apart
        assert sum(abs(v) for v in p) == 2 and sum(abs(v) for v in q) == 2
        assert sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) == 8
    # a constant image: every patch distance is 0, every descriptor 1, finite
    constant = torch.full((1, 1, 6, 6, 6), -1000.0)
    assert torch.equal(mind_ssc(constant), torch.ones(1, 12, 6, 6, 6))


@pytest.mark.parametrize("shape", SHAPES)
def test_ngf_is_invariant_to_monotone_intensity_maps(shape):
    image = ramp(shape)
    ngf = NGF(eta=1e-6)
    # along one axis every gradient is parallel to it, for any strictly monotone map
    for transformed in (torch.exp(image), image**3, -torch.atan(image)):
        assert ngf(image, transformed).item() == pytest.approx(0.0, abs=1e-6)  # eta^2 / |g|^2
    # on a textured image: exactly invariant to affine maps, close for a smooth monotone one
    image = textured(shape)
    other = textured(shape, seed=1)
    reference = NGF()(image, other)
    assert torch.allclose(NGF()(4 - 2 * image, other), reference, atol=1e-12)
    assert NGF(eta=1e-3)(image, torch.exp(0.3 * image)).item() < 0.02
    assert reference.item() > 0.3


def test_ngf_of_perpendicular_edges_is_one():
    x = torch.arange(10, dtype=torch.float64)
    along0 = x.view(1, 1, -1, 1).expand(1, 1, 10, 10)
    along1 = x.view(1, 1, 1, -1).expand(1, 1, 10, 10)
    assert NGF()(along0, along1).item() == pytest.approx(1.0)
    n = normalized_gradient(along0, eta=0.1)
    # unit gradients everywhere inside (one-voxel border: half steps), eta = 0.1 of their mean
    assert n[0, 1, 3, 3].item() == 0.0
    assert 0.99 < n[0, 0, 3, 3].item() < 1.0


@pytest.mark.parametrize("shape", SHAPES)
def test_mutual_information_analytic_cases(shape):
    # a balanced binary image against itself: MI -> log 2 as the Parzen window narrows
    n0 = shape[0]
    half = (torch.arange(n0) < n0 // 2).double().view(1, 1, -1, *[1] * (len(shape) - 1))
    binary = half.expand(1, 1, *shape).contiguous()
    sharp = mutual_information(binary, binary, bins=16, sigma_ratio=0.1)
    assert sharp.item() == pytest.approx(math.log(2), rel=1e-6)
    # exactly independent halves (one along axis 0, one along axis 1): MI = 0
    other = binary.transpose(2, 3).contiguous() if len(shape) == 2 else None
    if other is None:
        n1 = shape[1]
        other = (torch.arange(n1) < n1 // 2).double().view(1, 1, 1, -1, 1)
        other = other.expand(1, 1, *shape).contiguous()
        assert mutual_information(binary, other).item() == pytest.approx(0.0, abs=1e-12)
    # invariant to affine maps (inversion included), lower for unrelated images
    image = textured(shape)
    mi = MI()
    assert torch.allclose(mi(image, 3 - 2 * image), mi(image, image), atol=1e-12)
    assert mi(image, textured(shape, seed=5)).item() > mi(image, image).item() + 0.3
    with pytest.raises(ValueError, match="less than or equal to 256"):
        MI(bins=300)


@pytest.mark.parametrize(
    ("name", "options"),
    [("mind_ssc", {"radius": 2, "dilation": 1}), ("ngf", {"eta": 1.0}), ("mi", {"bins": 8})],
)
def test_properties_with_non_default_options(name, options):
    check_similarity_properties(SIMILARITIES.get(name), options=options, max_examples=5)
