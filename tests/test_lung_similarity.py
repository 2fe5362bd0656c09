"""MIND-SSC, NGF and Parzen mutual information against analytic cases, 2D and 3D."""

import itertools
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


# MIND-SSC written out from the paper (Heinrich, Jenkinson, Papiez, Brady, Schnabel, "Towards
# realtime multimodal fusion for image-guided interventions using self-similarities", MICCAI
# 2013), voxel by voxel: the self-similarity context compares the six axis neighbours of x at
# distance d pairwise (the 12 pairs sqrt(2) d apart, 4 in 2D); each pair's patch distance is
# the mean squared difference over a box of side 2r + 1; MIND = exp(-D / V) with D shifted by
# its minimum over the pairs and V the mean of the shifted distances, clamped (as ConvexAdam
# does) to [1e-3, 1e3] times its mean over the image. Outside the image an intensity reads the
# nearest border voxel, and a box is cut to the image.
SSC_PAIRS_3D = [  # the 12 edges of the six-neighbourhood's octahedron, in ssc_offsets' order
    ((-1, 0, 0), (0, -1, 0)),
    ((-1, 0, 0), (0, 1, 0)),
    ((-1, 0, 0), (0, 0, -1)),
    ((-1, 0, 0), (0, 0, 1)),
    ((1, 0, 0), (0, -1, 0)),
    ((1, 0, 0), (0, 1, 0)),
    ((1, 0, 0), (0, 0, -1)),
    ((1, 0, 0), (0, 0, 1)),
    ((0, -1, 0), (0, 0, -1)),
    ((0, -1, 0), (0, 0, 1)),
    ((0, 1, 0), (0, 0, -1)),
    ((0, 1, 0), (0, 0, 1)),
]
SSC_PAIRS_2D = [((-1, 0), (0, -1)), ((-1, 0), (0, 1)), ((1, 0), (0, -1)), ((1, 0), (0, 1))]


def mind_ssc_reference(volume, radius, dilation):
    """MIND-SSC ``(P, *shape)`` of one image (a nested loop over voxels, pairs and boxes)."""
    shape = volume.shape
    ndim = len(shape)
    pairs = [
        (tuple(dilation * v for v in p), tuple(dilation * v for v in q))
        for p, q in (SSC_PAIRS_3D if ndim == 3 else SSC_PAIRS_2D)
    ]

    def intensity(point):  # nearest border voxel outside the image
        return volume[tuple(min(max(c, 0), n - 1) for c, n in zip(point, shape, strict=True))]

    distances = torch.zeros(len(pairs), *shape, dtype=volume.dtype)
    window = range(-radius, radius + 1)
    for x in itertools.product(*(range(n) for n in shape)):
        box = [
            tuple(a + b for a, b in zip(x, step, strict=True))
            for step in itertools.product(window, repeat=ndim)
        ]
        box = [y for y in box if all(0 <= c < n for c, n in zip(y, shape, strict=True))]
        for k, (p, q) in enumerate(pairs):
            total = 0.0
            for y in box:
                yp = tuple(a + b for a, b in zip(y, p, strict=True))
                yq = tuple(a + b for a, b in zip(y, q, strict=True))
                total += float(intensity(yp) - intensity(yq)) ** 2
            distances[(k, *x)] = total / len(box)
    distances = distances - distances.amin(dim=0, keepdim=True)
    variance = distances.mean(dim=0, keepdim=True)
    level = max(float(variance.mean()), 1e-12)
    variance = variance.clamp(1e-3 * level, 1e3 * level)
    return torch.exp(-distances / variance)


@pytest.mark.parametrize(
    ("shape", "radius", "dilation"), [((7, 6, 5), 1, 2), ((6, 5, 7), 0, 1), ((9, 8), 1, 2)]
)
def test_mind_ssc_matches_the_papers_definition_voxel_by_voxel(shape, radius, dilation):
    ndim = len(shape)
    pairs = SSC_PAIRS_3D if ndim == 3 else SSC_PAIRS_2D
    assert ssc_offsets(ndim, dilation) == [
        (tuple(dilation * v for v in p), tuple(dilation * v for v in q)) for p, q in pairs
    ]
    image = textured(shape, seed=3) + 0.1 * torch.rand(shape, dtype=torch.float64)
    expected = mind_ssc_reference(image[0, 0], radius, dilation)
    actual = mind_ssc(image, radius=radius, dilation=dilation)[0]
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


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
    # exactly independent halves (one along axis 0, one along axis 1): MI = 0, 2D and 3D
    n1 = shape[1]
    other = (torch.arange(n1) < n1 // 2).double().view(1, 1, 1, -1, *[1] * (len(shape) - 2))
    other = other.expand(1, 1, *shape).contiguous()
    assert mutual_information(binary, other).item() == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(binary, other, bins=16, sigma_ratio=0.1).item() == pytest.approx(
        0.0, abs=1e-12
    )
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
