import math

import pytest
import torch

from regzoo.params import ParamSpace, ParamSpec


@pytest.fixture
def space():
    return ParamSpace.of(
        ParamSpec(name="lam", low=0.0, high=5.0, default=1.0),
        ParamSpec(name="eps", low=1e-4, high=1e-1, default=1e-3, scale="log"),
    )


def test_normalize_roundtrip_and_log_scale(space):
    values = torch.tensor([[0.0, 1e-4], [5.0, 1e-1], [2.5, 1e-2]])
    unit = space.normalize(values)
    assert torch.allclose(unit[:, 0], torch.tensor([0.0, 1.0, 0.5]))
    # 1e-2 is two thirds of the way from 1e-4 to 1e-1 in log scale
    assert unit[2, 1].item() == pytest.approx(2 / 3, abs=1e-5)
    assert torch.allclose(space.denormalize(unit), values, rtol=1e-5)


def test_sample_within_bounds_and_reproducible(space):
    a = space.sample(1000, torch.Generator().manual_seed(3))
    b = space.sample(1000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == (1000, 2)
    assert a[:, 0].min() >= 0 and a[:, 0].max() <= 5
    assert a[:, 1].min() >= 1e-4 and a[:, 1].max() <= 1e-1
    # log-uniform: median near the geometric mean of the bounds
    assert a[:, 1].median().item() == pytest.approx(math.sqrt(1e-5), rel=0.3)


def test_endpoint_oversampling(space):
    draws = space.sample(4000, torch.Generator().manual_seed(0), endpoint_rate=0.2)
    at_ends = ((draws[:, 0] == 0) | (draws[:, 0] == 5)).float().mean().item()
    assert at_ends == pytest.approx(0.2, abs=0.03)
    with pytest.raises(ValueError, match="endpoint_rate"):
        space.sample(2, endpoint_rate=1.5)


def test_grid(space):
    grid = space.grid([3, 2])
    assert grid.shape == (6, 2)
    assert sorted(set(grid[:, 0].tolist())) == [0.0, 2.5, 5.0]
    assert torch.allclose(grid[:, 1].unique(), torch.tensor([1e-4, 1e-1]))
    with pytest.raises(ValueError, match="expected 2 step counts"):
        space.grid([3])
    # explicit axes (what a sweep asks for), in the given order, the rest held at defaults
    axes = space.grid({"eps": [1e-3, 1e-2], "lam": [0.0, 4.0, 5.0]})
    assert axes.shape == (6, 2)
    assert axes[:3, 1].tolist() == pytest.approx([1e-3] * 3)  # the first axis varies slowest
    assert axes[:3, 0].tolist() == [0.0, 4.0, 5.0]
    assert space.grid({"lam": [2.0]}).tolist() == [[2.0, pytest.approx(1e-3)]]
    assert space.grid({"lam": [2.0]}, values={"eps": 0.05})[0, 1] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="out of range"):
        space.grid({"lam": [6.0]})
    with pytest.raises(KeyError, match="no parameter 'mu'"):
        space.grid({"mu": [1.0]})


def test_validate_names_parameter_and_bounds(space):
    assert space.validate({"lam": 2.0}) == {"lam": 2.0, "eps": 1e-3}
    with pytest.raises(ValueError, match=r"'lam'=7.0 is out of range \[0.0, 5.0\]"):
        space.validate({"lam": 7.0})
    with pytest.raises(ValueError, match="must be finite"):
        space.validate({"lam": float("nan")})
    with pytest.raises(KeyError, match="did you mean 'lam'"):
        space.validate({"lamb": 1.0})


def test_spec_errors_and_overrides():
    with pytest.raises(ValueError, match="log scale needs low > 0"):
        ParamSpec(name="x", low=0.0, high=1.0, default=0.5, scale="log")
    with pytest.raises(ValueError, match=r"default=2\.0 lies outside"):
        ParamSpec(name="x", low=0.0, high=1.0, default=2.0)
    with pytest.raises(ValueError, match="duplicate parameter names"):
        ParamSpace.of(
            ParamSpec(name="a", low=0, high=1, default=0),
            ParamSpec(name="a", low=0, high=1, default=0),
        )
    spec = ParamSpec(name="lam", low=0.0, high=1.0, default=0.8)
    wider = spec.override(high=5.0)
    assert (wider.low, wider.high, wider.default) == (0.0, 5.0, 0.8)
    narrower = spec.override(high=0.5)
    assert narrower.default == 0.25  # outside the new range: its middle
    assert spec.override(low=1.0, high=100.0, scale="log").default == pytest.approx(10.0)
    with pytest.raises(ValueError, match="declared on a log scale"):
        ParamSpec(name="k", low=1.0, high=2.0, default=1.0, scale="log").override(low=0.0)
    fixed = spec.fixed(45.33)
    assert fixed.is_fixed and fixed.default == 45.33


def test_tensor_helpers(space):
    t = space.to_tensor({"lam": 2.0}, batch=3)
    assert t.shape == (3, 2) and torch.allclose(t[:, 0], torch.full((3,), 2.0))
    parts = space.to_dict(t)
    assert set(parts) == {"lam", "eps"} and parts["lam"].shape == (3,)
    with pytest.raises(ValueError, match="expected a last dimension of 2"):
        space.normalize(torch.zeros(3, 5))


def test_physical_domain_is_a_hard_limit():
    stiffness = ParamSpec(
        name="mu", low=1e-2, high=1e2, default=1.0, scale="log", domain=(0.0, None)
    )
    assert stiffness.domain_text() == "[0, inf)"
    with pytest.raises(ValueError, match=r"leaves its physical domain \[0, inf\)"):
        stiffness.override(low=-1.0, scale="linear")
    with pytest.raises(ValueError, match="physical domain"):
        stiffness.fixed(-2.0)
    # the training range may be moved anywhere inside the domain
    assert stiffness.override(low=10.0, high=1e4).high == 1e4


def test_spaced_follows_the_scale():
    log = ParamSpec(name="mu", low=1e-2, high=1e2, default=1.0, scale="log")
    assert log.spaced(0.01, 100, 5) == pytest.approx([0.01, 0.1, 1.0, 10.0, 100.0])
    linear = ParamSpec(name="lam", low=0, high=1, default=0.5)
    assert linear.spaced(0, 1, 3) == pytest.approx([0.0, 0.5, 1.0])
    assert linear.spaced(0.3, 0.9, 1) == [0.3]
    with pytest.raises(ValueError, match="grid ends must be > 0"):
        log.spaced(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="count >= 1"):
        log.spaced(0.1, 1.0, 0)


def test_four_decade_log_range_round_trips():
    space = ParamSpace.of(
        ParamSpec(name="lam", low=1e-2, high=1e2, default=1.0, scale="log"),
        ParamSpec(name="mu", low=1e-2, high=1e2, default=1.0, scale="log"),
    )
    values = torch.tensor([[1e-2, 1e2], [1.0, 45.33], [15.51, 1.72]])
    unit = space.normalize(values)
    assert torch.allclose(unit[0], torch.tensor([0.0, 1.0]))
    assert unit[1, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert torch.allclose(space.denormalize(unit), values, rtol=1e-5)
    # log-uniform sampling: each decade gets a quarter of the draws
    draws = space.sample(4000, torch.Generator().manual_seed(1))[:, 0]
    assert ((draws > 0.1) & (draws < 1.0)).float().mean().item() == pytest.approx(0.25, abs=0.03)


ANGLE = ParamSpec(
    name="theta", low=0.0, high=2 * math.pi, default=0.0, scale="periodic", description="angle"
)


def test_a_periodic_parameter_wraps_values_into_one_period():
    assert ANGLE.period == pytest.approx(2 * math.pi)
    assert ANGLE.check(2 * math.pi + 0.5) == pytest.approx(0.5)
    assert ANGLE.check(-0.5) == pytest.approx(2 * math.pi - 0.5)
    assert ANGLE.check(2 * math.pi) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="must be finite"):
        ANGLE.check(math.inf)
    with pytest.raises(ValueError, match="needs low < high"):
        ParamSpec(name="theta", low=1.0, high=1.0, default=1.0, scale="periodic")


def test_a_periodic_grid_does_not_repeat_its_end():
    space = ParamSpace.of(ANGLE)
    grid = space.grid(4)[:, 0]
    assert torch.allclose(grid, torch.tensor([0.0, 0.5, 1.0, 1.5]) * math.pi, atol=1e-6)
    assert ANGLE.spaced(0.0, 2 * math.pi, 4) == pytest.approx(
        [0, math.pi / 2, math.pi, 1.5 * math.pi]
    )
    assert ANGLE.spaced(0.0, 1.0, 3) == pytest.approx([0.0, 0.5, 1.0])  # not a whole turn


def test_periodic_features_are_a_point_on_the_circle():
    space = ParamSpace.of(ParamSpec(name="mu", low=0.1, high=10, default=1, scale="log"), ANGLE)
    assert space.feature_size == 3
    values = torch.tensor([[1.0, 0.0], [1.0, 2 * math.pi - 1e-6], [1.0, math.pi / 2]])
    features = space.features(values)
    assert features.shape == (3, 3)
    assert torch.allclose(features[0], features[1], atol=1e-5)  # both ends: one setting
    assert torch.allclose(features[2], torch.tensor([0.5, 0.5, 1.0]), atol=1e-6)
    assert ((features >= 0) & (features <= 1)).all()
    # without periodic parameters the features are the normalised coordinates
    plain = ParamSpace.of(space["mu"])
    assert torch.equal(plain.features(values[:, :1]), plain.normalize(values[:, :1]))


def test_periodic_sampling_never_snaps_to_an_end_and_round_trips():
    space = ParamSpace.of(ANGLE)
    draws = space.sample(2000, torch.Generator().manual_seed(0), endpoint_rate=0.5)
    assert (draws[:, 0] == 0).sum() == 0
    assert ((draws >= 0) & (draws < 2 * math.pi)).all()
    assert torch.allclose(space.denormalize(space.normalize(draws)), draws, atol=1e-5)
