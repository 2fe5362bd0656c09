from typing import cast

import pytest
import torch
from conftest import QUICKSTART, tiny_overrides

from regzoo.checkpoint import load_model
from regzoo.config import load_config
from regzoo.lightning_module import HyperRegistration
from regzoo.resolve import build_objective
from regzoo.testing import random_smooth_field


def _elastic_config(high: float) -> dict:
    """The small network with lam, mu free in [0.01, high] on a log scale."""
    bounds = {"low": 0.01, "high": high, "scale": "log"}
    term = {"name": "linear_elastic", "params": {"lam": bounds, "mu": bounds}}
    return {
        "model": {"enc": [4, 8], "dec": [8, 8, 4], "hyper_units": [8]},
        "trainer": {"max_steps": 1},
        "regularizers": [term],
    }


SMALL = _elastic_config(1)
WIDE = _elastic_config(100)


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


def test_the_range_curriculum_widens_from_the_defaults():
    config = load_config(WIDE, ["sampling.curriculum_steps=100", "sampling.endpoint_rate=0.5"])
    model = HyperRegistration(config)
    assert [model.curriculum_width(s) for s in (0, 25, 100, 400)] == [0.0, 0.25, 1.0, 1.0]
    assert torch.allclose(model._draw_parameters(32, step=0), torch.ones(32, 2))
    # a quarter of the way: draws within a quarter of the log range around lam = mu = 1
    # (1 decade of 4), and the snapped ends are the current range's ends
    quarter = model._draw_parameters(256, step=25).log10()
    assert quarter.abs().max() <= 0.5 + 1e-5 and quarter.abs().max() > 0.45
    full = model._draw_parameters(256, step=100).log10()
    assert full.abs().max() > 1.99
    plain = HyperRegistration(load_config(WIDE))  # no curriculum: the whole range from step 0
    assert plain._draw_parameters(256, step=0).log10().abs().max() > 1.99


def test_learning_rate_schedule_and_conditioning_learning_rate():
    from regzoo.optimizers import learning_rate_factor

    assert learning_rate_factor(0, "cosine", 10, 110) == pytest.approx(1 / 11)
    assert learning_rate_factor(9, "cosine", 10, 110) == pytest.approx(10 / 11)
    assert learning_rate_factor(10, "cosine", 10, 110) == pytest.approx(1.0)
    assert learning_rate_factor(60, "cosine", 10, 110) == pytest.approx(0.5)
    assert learning_rate_factor(110, "cosine", 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_factor(500, "constant", 10, 110) == 1.0
    config = load_config(
        WIDE,
        [
            "optimizer.lr=0.01",
            "optimizer.schedule=cosine",
            "optimizer.conditioning_lr_scale=0.1",
            "trainer.max_steps=100",
        ],
    )
    model = HyperRegistration(config)
    setup = model.configure_optimizers()
    backbone, conditioning = setup["optimizer"].param_groups
    assert backbone["lr"] == pytest.approx(0.01) and conditioning["lr"] == pytest.approx(0.001)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("film" in names[id(p)] or "hypernet" in names[id(p)] for p in conditioning["params"])
    assert cast(dict, setup["lr_scheduler"])["interval"] == "step"
    with pytest.raises(ValueError, match=r"cosine' needs trainer\.max_steps"):
        load_config(
            WIDE, ["optimizer.schedule=cosine", "trainer.max_steps=-1", "trainer.max_epochs=3"]
        )


def test_lookahead_is_the_distance_to_the_refined_field():
    from regzoo.refinement import RefineOptions, refine_field

    config = load_config(WIDE, ["lookahead.steps=3", "lookahead.weight=2.0"])
    model = HyperRegistration(config)
    torch.manual_seed(0)
    batch = {"fixed": torch.rand(2, 1, 16, 16, 16), "moving": torch.rand(2, 1, 16, 16, 16)}
    values = torch.tensor([[0.1, 0.1], [10.0, 10.0]])
    _, output, _ = model._loss(batch, values)
    ahead = model._lookahead(batch, values, output)
    target = refine_field(
        model.objective,
        batch["fixed"],
        batch["moving"],
        output.displacement.detach(),
        values,
        RefineOptions(steps=3, levels=1),
    ).displacement
    expected = 2.0 * (output.displacement - target).pow(2).flatten(1).mean(1)
    assert ahead.shape == (2,) and torch.allclose(ahead, expected, rtol=1e-4, atol=1e-10)
    assert ahead.requires_grad and bool((ahead > 0).all())


def test_weight_averaging_saves_and_validates_the_average(tiny_phantom, tmp_path):
    from regzoo.training import train

    overrides = tiny_overrides(tiny_phantom, tmp_path / "run", steps=3)
    checkpoint = train(load_config(QUICKSTART, [*overrides, "optimizer.ema_steps=2"]))
    state = torch.load(checkpoint, weights_only=True)
    averaged = state["state_dict"]
    assert int(state["averaging_state"]["n_averaged"]) == 3  # one update per step
    assert averaged.keys() == state["current_model_state"].keys()
    model = load_model(checkpoint)  # the average is the model
    for name, value in model.state_dict().items():
        assert torch.equal(value, averaged[name])


@pytest.mark.parametrize("conditioning", ["film", "weights"])
def test_each_conditioning_trains_saves_and_reloads(conditioning, tiny_phantom, tmp_path):
    from regzoo.training import train

    overrides = [
        *tiny_overrides(tiny_phantom, tmp_path / "run"),
        f"model.conditioning={conditioning}",
    ]
    checkpoint = train(load_config(QUICKSTART, overrides))
    model = load_model(checkpoint)  # its weights' shapes are checked against its config
    assert model.config.model.conditioning == conditioning
    images = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(images, images, {"lam": 0.1, "mu": 10}).displacement
    assert out.shape == (1, 3, 32, 32, 32) and bool(torch.isfinite(out).all())


def test_the_gradient_check_syncs_once_per_step(monkeypatch):
    from regzoo.lightning_module import NonFiniteLossError

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
    optimizer = torch.optim.SGD(params, lr=0.1)
    model.on_before_optimizer_step(optimizer)
    assert len(syncs) == 1  # one fused reduction, not one sync per parameter tensor
    monkeypatch.undo()
    name, bad = list(model.named_parameters())[3]
    assert bad.grad is not None
    bad.grad[(0,) * bad.grad.ndim] = float("nan")
    with pytest.raises(NonFiniteLossError, match=f"first: {name}"):
        model.on_before_optimizer_step(optimizer)
