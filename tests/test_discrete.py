import pytest
import torch
import torch.nn.functional as F

from regzoo._errors import InputError
from regzoo.discrete import discrete_displacement
from regzoo.similarity import MINDSSC


def smooth_image(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, *[n // 4 for n in shape], generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(coarse, size=list(shape), mode=mode, align_corners=False)


@pytest.mark.parametrize(("shape", "shift"), [((64, 64), (8, -4)), ((32, 32, 32), (4, -8, 4))])
def test_a_translation_by_whole_blocks_is_found(shape, shift):
    margin = 8
    scene = smooth_image([n + 2 * margin for n in shape])
    # two views of one scene: moving(x + shift) = fixed(x), so u = shift
    fixed = scene[(..., *[slice(margin, margin + n) for n in shape])]
    moving = scene[
        (..., *[slice(margin - s, margin - s + n) for s, n in zip(shift, shape, strict=True)])
    ]
    u = discrete_displacement(fixed, moving, grid=4, radius=3)
    assert u.shape == (1, len(shape), *shape) and not u.requires_grad
    # content in both views, away from the borders where it leaves one
    centre = tuple(slice(n // 4, 5 * n // 8) for n in shape)
    for axis, expected in enumerate(shift):
        assert torch.allclose(u[0, axis][centre], torch.tensor(float(expected)), atol=0.1)


def test_identical_images_give_zero_and_the_descriptor_is_a_choice():
    fixed = smooth_image((32, 32, 32))
    assert discrete_displacement(fixed, fixed, grid=2, radius=2).abs().max() == 0
    coarse_mind = MINDSSC(radius=2, dilation=3)
    assert discrete_displacement(fixed, fixed, descriptor=coarse_mind).abs().max() == 0


def test_coupling_smooths_a_noisy_choice():
    """Where the images say nothing (pure noise against noise) the uncoupled choice is
    scattered; the coupled one varies less from block to block."""
    g = torch.Generator().manual_seed(3)
    fixed, moving = torch.rand(1, 1, 48, 48, generator=g), torch.rand(1, 1, 48, 48, generator=g)

    def roughness(u: torch.Tensor) -> float:
        return float((u[..., 4:, :] - u[..., :-4, :]).abs().mean())

    free = discrete_displacement(fixed, moving, grid=4, radius=2, coupling=())
    coupled = discrete_displacement(fixed, moving, grid=4, radius=2)
    assert roughness(coupled) < 0.7 * roughness(free)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grid": 0}, "grid and radius must be >= 1"),
        ({"radius": 0}, "grid and radius must be >= 1"),
        ({"coupling": (0.1, -1.0)}, "coupling weights must be >= 0"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    image = smooth_image((16, 16))
    with pytest.raises(InputError, match=message):
        discrete_displacement(image, image, **kwargs)
    with pytest.raises(InputError, match="must have the same shape"):
        discrete_displacement(image, image[..., :8])


def test_sizes_that_are_not_multiples_of_the_block_stay_aligned():
    """A constant displacement is constant after upsampling, and the block centres land where
    they belong, whatever the image size."""
    from regzoo.discrete import _upsample

    coarse = torch.arange(13, dtype=torch.float32).view(1, 1, 13).expand(1, 2, 13)
    coarse = coarse[..., None].expand(1, 2, 13, 13).contiguous()  # value = block index (axis 0)
    up = _upsample(coarse, (50, 50), 4)
    assert up.shape == (1, 2, 50, 50)
    # block i's centre 4 i + 1.5 lies halfway between voxels 4 i + 1 and 4 i + 2
    for i in (2, 6, 11):
        assert float(up[0, 0, 4 * i + 1 : 4 * i + 3, 7].mean()) == pytest.approx(i, abs=1e-5)
