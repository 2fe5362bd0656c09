import pytest
import torch

from regzoo.config import load_config
from regzoo.model import HyperRegistration, load_model
from regzoo.resolve import build_objective
from regzoo.testing import random_smooth_field

SMALL = {
    "model": {"enc": [4, 8], "dec": [8, 8, 4], "hyper_units": [8]},
    "trainer": {"max_steps": 1},
    "regularizers": [
        {
            "name": "linear_elastic",
            "params": {
                "lam": {"low": 0.01, "high": 1, "scale": "log"},
                "mu": {"low": 0.01, "high": 1, "scale": "log"},
            },
        }
    ],
}


def test_each_sample_uses_its_own_parameters():
    objective = build_objective(load_config(SMALL))
    fixed, warped = torch.rand(2, 1, 12, 12, 12), torch.rand(2, 1, 12, 12, 12)
    field = random_smooth_field((12, 12, 12))
    values = torch.tensor([[0.1, 0.9], [0.7, 0.05]])
    batched = objective(fixed, warped, field, values).total
    singles = torch.cat(
        [
            objective(
                fixed[i : i + 1], warped[i : i + 1], field[i : i + 1], values[i : i + 1]
            ).total
            for i in range(2)
        ]
    )
    assert torch.allclose(batched, singles, rtol=1e-5)
    swapped = objective(fixed, warped, field, values.flip(0)).total
    assert not torch.allclose(batched, swapped)


def test_hypermorph_weighting_and_velocity_regularization():
    cfg = {
        **SMALL,
        "weighting": "hypermorph",
        "regularize": "velocity",
        "model": {**SMALL["model"], "int_steps": 3},
        "regularizers": [{"name": "diffusion", "alpha": {"low": 0, "high": 1}}],
    }
    model = HyperRegistration(load_config(cfg))
    batch = {"fixed": torch.rand(2, 1, 16, 16, 16), "moving": torch.rand(2, 1, 16, 16, 16)}
    values = torch.tensor([[0.0], [1.0]])
    terms, output, _ = model._loss(batch, values)
    assert output.velocity is not None
    # alpha = 0: similarity only; alpha = 1: regularizer only
    assert terms.total[0].item() == pytest.approx(terms.similarity[0].item(), rel=1e-5)
    assert terms.total[1].item() == pytest.approx(terms.energies["diffusion"][1].item(), rel=1e-5)
    displacement_cfg = load_config({**cfg, "regularize": "displacement"})
    model_d = HyperRegistration(displacement_cfg)
    model_d.load_state_dict(model.state_dict())
    terms_d, out_d, _ = model_d._loss(batch, values)
    expected = model.objective.regularizers[0](out_d.displacement)
    assert torch.allclose(terms_d.energies["diffusion"], expected)


def test_training_step_draws_reproducible_parameters():
    a, b = HyperRegistration(load_config(SMALL)), HyperRegistration(load_config(SMALL))
    draws_a, draws_b = a._draw_parameters(64), b._draw_parameters(64)
    assert torch.equal(draws_a, draws_b)
    at_ends = torch.isclose(draws_a, torch.tensor(0.01)) | torch.isclose(draws_a, torch.tensor(1.0))
    assert at_ends.float().mean() > 0.1  # endpoint oversampling


def test_checkpoint_reloads_to_identical_outputs(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    again = load_model(tiny_checkpoint)
    images = torch.rand(1, 1, 32, 32, 32)
    out_a = model(images, images.flip(2), {"mu": 0.3, "lam": 0.2}).displacement
    out_b = again(images, images.flip(2), {"linear_elastic.mu": 0.3, "lam": 0.2}).displacement
    assert torch.equal(out_a, out_b)
    with pytest.raises(ValueError, match=r"'linear_elastic.mu'=300.0 is out of range"):
        model(images, images, {"mu": 300.0})


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "none.ckpt")
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(ValueError, match="not a regzoo checkpoint"):
        load_model(bogus)
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        load_model(text)


def test_normalized_weighting_is_the_convex_form_for_a_stiffness():
    config = load_config(
        {
            **SMALL,
            "weighting": "normalized",
            "regularizers": [{"name": "linear_elastic"}],  # declared [1e-2, 1e2], defaults 1
        }
    )
    objective = build_objective(config)
    fixed, warped = torch.rand(3, 1, 12, 12, 12), torch.rand(3, 1, 12, 12, 12)
    field = random_smooth_field((12, 12, 12))[:1].expand(3, -1, -1, -1, -1)
    k = torch.tensor([0.01, 1.0, 100.0])
    terms = objective(fixed, warped, field, torch.stack([k, k], dim=1))
    # lam = mu = k: the energy is k times the default's, so the normaliser is 1 + k exactly
    assert torch.allclose(terms.normalizer, 1 + k, rtol=1e-4)
    energy = terms.energies["linear_elastic"]
    assert torch.allclose(terms.total, terms.similarity + energy)
    assert torch.allclose(terms.training_loss, (terms.similarity + energy) / (1 + k), rtol=1e-5)
    assert not terms.normalizer.requires_grad


def test_log_ranges_survive_the_checkpoint_and_span_four_decades(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    for name in ("linear_elastic.lam", "linear_elastic.mu"):
        spec = model.space[name]
        assert (spec.low, spec.high, spec.scale, spec.domain) == (0.01, 100.0, "log", (0.0, None))
    images = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        soft = model(images, images, {"lam": 0.01, "mu": 0.01}).displacement
        stiff = model(images, images, {"lam": 100, "mu": 100}).displacement
    assert not torch.allclose(soft, stiff)
    with pytest.raises(ValueError, match="out of range"):
        model(images, images, {"lam": 1000.0})


def test_the_gradient_check_syncs_once_per_step(monkeypatch):
    from regzoo.model import NonFiniteLossError

    model = HyperRegistration(load_config(SMALL))
    params = list(model.parameters())
    assert len(params) > 10
    for p in params:
        p.grad = torch.ones_like(p)
    syncs = []
    to_bool = torch.Tensor.__bool__

    def counting(self):
        syncs.append(self)
        return to_bool(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counting)
    model.on_before_optimizer_step(None)
    assert len(syncs) == 1  # one fused reduction, not one sync per parameter tensor
    monkeypatch.undo()
    name, bad = list(model.named_parameters())[3]
    bad.grad[(0,) * bad.grad.ndim] = float("nan")
    with pytest.raises(NonFiniteLossError, match=f"first: {name}"):
        model.on_before_optimizer_step(None)
