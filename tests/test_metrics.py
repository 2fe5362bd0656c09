import pytest
import torch

from regzoo.metrics import dice, folding_fraction, sdlogj, target_registration_error
from regzoo.spatial import identity_grid


def test_dice_known_values():
    a = torch.zeros(10, 10, dtype=torch.long)
    b = torch.zeros(10, 10, dtype=torch.long)
    a[:5], b[:4] = 1, 1  # |A| = 50, |B| = 40, overlap 40
    assert dice(a, b) == {1: pytest.approx(80 / 90)}
    a[9, 9], b[9, 9] = 2, 2
    assert dice(a, b)[2] == 1.0
    assert dice(a, b, labels=[3]) == {3: 1.0}  # both empty
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, b[:5])


def test_tre_with_known_spacing():
    fixed = torch.tensor([[2.0, 2.0, 2.0], [4.0, 5.0, 6.0]])
    moving = fixed + torch.tensor([1.0, 0.0, 0.0])
    spacing = (2.0, 1.0, 3.0)
    zero = torch.zeros(3, 8, 8, 8)
    assert torch.allclose(
        target_registration_error(fixed, moving, zero, spacing), torch.full((2,), 2.0)
    )
    shift = zero.clone()
    shift[0] = 1.0  # exactly the motion
    assert torch.allclose(target_registration_error(fixed, moving, shift, spacing), torch.zeros(2))
    half = zero.clone()
    half[2] = 1.0  # wrong axis: error sqrt(2^2 + 3^2)
    assert target_registration_error(fixed, moving, half, spacing)[0].item() == pytest.approx(
        13**0.5
    )


def test_sdlogj_of_affine_field_is_zero_and_folding_is_counted():
    x = identity_grid((10, 10, 10))
    A = torch.tensor([[0.1, 0.05, 0.0], [0.0, -0.1, 0.02], [0.03, 0.0, 0.2]])
    affine = torch.einsum("ij,j...->i...", A, x)
    assert sdlogj(affine) == pytest.approx(0.0, abs=1e-7)
    assert folding_fraction(affine) == 0.0
    folded = affine.clone()
    folded[0, 3:5] = folded[0, 3:5] - 3.0 * x[0, 3:5]  # d_0 u_0 = -2 there: det < 0
    fraction = folding_fraction(folded)
    assert 0.0 < fraction < 0.5
    assert sdlogj(folded) > 1.0
    with pytest.raises(ValueError, match="expected a displacement"):
        sdlogj(torch.zeros(1, 3, 4, 4, 4))
