import pytest
import torch
import torch.nn.functional as F

from regzoo.similarity import LNCC, MSE, SIMILARITIES, box_filter


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
    assert torch.isfinite(const.grad).all()


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
