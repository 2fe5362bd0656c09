"""Tissue-specific physics: spatial parameter maps, per-label parameters, the tissue phantom."""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_overrides

from regzoo import regularizers
from regzoo._errors import InputError, MissingFileError
from regzoo.cli import main
from regzoo.config import ConfigError, load_config
from regzoo.data.learn2reg import Learn2RegDataset, read_label_names
from regzoo.data.phantom import TISSUE_LABELS, generate_case, write_phantom_dataset
from regzoo.regularizers import functional
from regzoo.regularizers.builtin import TotalVariation
from regzoo.resolve import build_objective
from regzoo.spatial import gradient
from regzoo.testing import constant_maps, random_smooth_field

SPATIAL = [n for n in regularizers.available() if regularizers.get(n).spatial_params]
LABELS = {"lung": 1, "soft_tissue": 2, "bone": 3, "heart": 4}
TISSUE_CONFIG = ROOT / "configs" / "phantom_tissue_elastic.yaml"


def per_label_config(params, labels=LABELS, name="linear_elastic"):
    return {
        "regularizers": [{"name": name, "params": params}],
        "trainer": {"max_steps": 1},
        "data": {"labels": labels},
    }


MU_PER_LABEL = {
    "mu": {
        "per_label": {"lung": {"low": 0.01, "high": 1.0}, "bone": {"low": 1.0, "high": 100.0}},
        "background": 2.0,
    }
}


# -- energies accept maps -----------------------------------------------------------------------
def test_builtin_energies_with_parameters_accept_maps():
    assert set(SPATIAL) == {
        "linear_elastic",
        "total_variation",
        "jacobian",
        "hyperelastic",
        "st_venant_kirchhoff",
        "neo_hookean",
        "rigidity",
        "sliding",
    }


@pytest.mark.parametrize("name", SPATIAL)
@pytest.mark.parametrize("shape", [(9, 8), (6, 7, 5)])
def test_constant_map_is_exactly_the_scalar_energy(name, shape):
    cls = regularizers.get(name)
    reg = cls()
    u = random_smooth_field(shape, dtype=torch.float64, amplitude=0.8, seed=3)
    params = {
        spec.name: torch.tensor([spec.default, spec.default * 0.5 + 0.1], dtype=torch.float64)
        for spec in cls.space
    }
    scalar = reg(u, params, spacing=(1.5, 0.7, 2.0)[: len(shape)])
    mapped = reg(u, constant_maps(params, shape), spacing=(1.5, 0.7, 2.0)[: len(shape)])
    # float64, exactly: a spatially constant map is the per-sample value
    assert torch.equal(mapped, scalar)


def test_piecewise_map_on_linear_field_2d():
    # u_0 = a x_0: d_0 u_0 = a, so the density is mu a^2 + lam a^2 / 2 at every point
    a, lam, (mu_top, mu_bottom), shape = 0.3, 0.5, (0.2, 5.0), (7, 6)
    x0 = torch.arange(shape[0], dtype=torch.float64).view(-1, 1).expand(shape)
    u = torch.stack([a * x0, torch.zeros(shape, dtype=torch.float64)])[None]
    mu = torch.full_like(x0, mu_bottom).masked_fill(x0 < 2, mu_top)[None, None]
    energy = functional.linear_elastic_energy(u, lam, mu)
    # the interior has (7 - 1) x (6 - 1) points, 2 rows of them at mu_top
    expected = (2 * (mu_top * a**2 + lam * a**2 / 2) + 4 * (mu_bottom * a**2 + lam * a**2 / 2)) / 6
    assert energy.item() == pytest.approx(expected, rel=1e-12)


def test_piecewise_map_weights_the_point_where_forward_differences_start_3d():
    # u_1 = c x_0^2 / 2 (a shear): d_0 u_1 = c (2 x_0 + 1) / 2 at the interior point x_0, so
    # the density is mu(x) / 4 * 2 (d_0 u_1)^2 with mu taken at the difference's first voxel
    c, shape, cut = 0.1, (6, 4, 5), 3
    x0 = torch.arange(shape[0], dtype=torch.float64).view(-1, 1, 1).expand(shape)
    zeros = torch.zeros(shape, dtype=torch.float64)
    u = torch.stack([zeros, c * x0**2 / 2, zeros])[None]
    mu = torch.full_like(x0, 10.0).masked_fill(x0 < cut, 1.0)[None, None]
    energy = functional.linear_elastic_energy(u, 0.0, mu)
    per_row = [
        (1.0 if x < cut else 10.0) / 2 * (c * (2 * x + 1) / 2) ** 2 for x in range(shape[0] - 1)
    ]
    assert energy.item() == pytest.approx(sum(per_row) / len(per_row), rel=1e-12)


def test_map_crop_offsets_and_shape_errors():
    density = torch.ones(1, 4, 4)
    grid = torch.arange(36.0).view(1, 1, 6, 6)
    cropped = functional.per_sample(grid, density, "k", "f")
    assert isinstance(cropped, torch.Tensor) and torch.equal(cropped, grid[:, 0, :4, :4])
    inner = functional.per_sample(grid, density, "k", "f", offset=1)
    assert isinstance(inner, torch.Tensor) and torch.equal(inner, grid[0, :, 1:5, 1:5])
    with pytest.raises(
        ValueError, match=r"parameter 'k' must be a float.*got shape \(1, 2, 6, 6\)"
    ):
        functional.per_sample(torch.ones(1, 2, 6, 6), density, "k", "f")
    reg = regularizers.get("linear_elastic")()
    u = torch.zeros(1, 2, 6, 6)
    with pytest.raises(InputError, match=r"'mu' must be a float or a tensor of shape \(1,\) or"):
        reg(u, {"mu": torch.ones(1, 1, 5, 6)})

    assert regularizers.get("total_variation") is TotalVariation

    class ScalarOnly(TotalVariation):
        spatial_params = False

    with pytest.raises(InputError, match=r"'eps' must be a float or a tensor of shape \(1,\), got"):
        ScalarOnly()(u, {"eps": torch.ones(1, 1, 6, 6)})


# -- per-label parameters in configs ------------------------------------------------------------
def test_per_label_parameters_become_free_parameters_and_maps():
    objective = build_objective(load_config(per_label_config(MU_PER_LABEL)))
    assert objective.space.names == [
        "linear_elastic.lam",
        "linear_elastic.mu@lung",
        "linear_elastic.mu@bone",
    ]
    assert objective.needs_labels
    assert objective.canonical_name("mu@bone") == "linear_elastic.mu@bone"
    values = objective.to_tensor({"mu@lung": 0.5, "mu@bone": 50.0, "lam": 0.1}, batch=2)
    labels = torch.tensor([[0, 1, 2, 3, 4]]).view(1, 1, 5, 1).expand(1, 1, 5, 3)
    maps = objective.parameter_maps(values, labels)
    assert list(maps) == ["linear_elastic.mu"]
    expected = torch.tensor([2.0, 0.5, 2.0, 50.0, 2.0]).view(5, 1).expand(5, 3)
    assert maps["linear_elastic.mu"].shape == (2, 1, 5, 3)
    assert torch.equal(maps["linear_elastic.mu"][1, 0], expected)


def test_per_label_objective_energy_is_the_hand_computed_one():
    objective = build_objective(load_config(per_label_config(MU_PER_LABEL)))
    a, shape = 0.2, (5, 4)
    x0 = torch.arange(shape[0], dtype=torch.float64).view(-1, 1).expand(shape)
    u = torch.stack([a * x0, torch.zeros(shape, dtype=torch.float64)])[None]
    labels = torch.tensor([1, 1, 3, 4, 3]).view(1, 1, 5, 1).expand(1, 1, *shape)
    values = torch.tensor([[1.0, 0.1, 10.0]], dtype=torch.float64)  # lam, mu@lung, mu@bone
    image = torch.zeros(1, 1, *shape, dtype=torch.float64)
    terms = objective(image, image, u, values, labels=labels)
    # interior rows 0..3: lung, lung, bone, heart (background 2.0); density mu a^2 + lam a^2 / 2
    expected = np.mean([m * a**2 + a**2 / 2 for m in (0.1, 0.1, 10.0, 2.0)])
    assert terms.energies["linear_elastic"].item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InputError, match=r"per-label parameters \(mu@lung, mu@bone\).*label map"):
        objective(image, image, u, values)


def test_per_label_config_errors_name_the_problem(monkeypatch):
    with pytest.raises(ConfigError, match=r"regularizers.0: unknown label 'lungs'.*'lung'"):
        build_objective(load_config(per_label_config({"mu": {"per_label": {"lungs": 1.0}}})))
    with pytest.raises(ConfigError, match=r"data.labels, or a 'labels' mapping"):
        build_objective(load_config(per_label_config(MU_PER_LABEL, labels=None)))
    with pytest.raises(ConfigError, match=r"label name 'a.b' must be"):
        load_config(per_label_config({"mu": {"per_label": {"a.b": 1.0}}}))
    with pytest.raises(ConfigError, match=r"'mu'=-1.0 leaves its physical domain"):
        build_objective(
            load_config(per_label_config({"mu": {"per_label": {"lung": 1.0}, "background": -1}}))
        )
    monkeypatch.setattr(regularizers.get("linear_elastic"), "spatial_params", False)
    with pytest.raises(ConfigError, match=r"'linear_elastic' does not accept spatial parameter"):
        build_objective(load_config(per_label_config(MU_PER_LABEL)))


def test_fixed_per_label_values_and_default_background():
    config = per_label_config({"mu": {"per_label": {"lung": 0.1, "bone": 10.0}}})
    objective = build_objective(load_config(config))
    assert "linear_elastic.mu@lung" in objective.fixed_values()
    assert objective.space.names == ["linear_elastic.lam"]
    labels = torch.tensor([0, 1, 3]).view(1, 1, 3, 1)
    maps = objective.parameter_maps(objective.to_tensor({}), labels)
    assert maps["linear_elastic.mu"].flatten().tolist() == pytest.approx([1.0, 0.1, 10.0])


# -- the phantom --------------------------------------------------------------------------------
def test_phantom_writes_tissue_labels_named_in_its_json(tiny_phantom):
    manifest = json.loads((tiny_phantom / "PhantomCT_dataset.json").read_text())
    assert manifest["labels"]["0"] == "background"
    assert read_label_names(tiny_phantom) == TISSUE_LABELS == LABELS
    item = Learn2RegDataset(tiny_phantom, "val", annotations=True)[0]
    labels = item["fixed_labels"]
    assert set(torch.unique(labels).tolist()) == {0, 1, 2, 3, 4}
    # the lung label is exactly the lung mask
    assert torch.equal(labels == 1, item["fixed_mask"] == 1)
    plain = Learn2RegDataset(tiny_phantom, "train", labels=True)[0]
    assert plain["fixed_labels"].shape == plain["fixed"].shape and "fixed_mask" not in plain


def test_missing_labels_are_reported(tmp_path):
    root = write_phantom_dataset(tmp_path / "p", n=2, val=1, shape=(16, 16, 16), progress=False)
    for path in (root / "labelsTr").glob("*_0000.nii.gz"):
        path.unlink()
    with pytest.raises(
        MissingFileError, match=r"label map not found: .*labelsTr/PhantomCT_0001_0000"
    ):
        Learn2RegDataset(root, "train", labels=True)[0]
    manifest = root / "PhantomCT_dataset.json"
    data = json.loads(manifest.read_text())
    del data["labels"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"no 'labels' mapping"):
        read_label_names(root)


@pytest.mark.parametrize("shape", [(40, 40, 40), (40, 36)])
def test_tissue_motion_is_rigid_in_bone_and_soft_in_the_lungs(shape):
    default = generate_case(shape, seed=4)
    tissue = generate_case(shape, seed=4, motion="tissue")
    # same anatomy, images at the fixed (exhale) phase identical; only the motion differs
    assert np.array_equal(default.fixed, tissue.fixed)
    assert np.array_equal(default.fixed_labels, tissue.fixed_labels)
    assert not np.array_equal(default.displacement, tissue.displacement)
    u = torch.from_numpy(tissue.displacement)[None].double()
    jac = gradient(u)  # (1, D, D, *s-1)
    strain = (jac + jac.transpose(1, 2)) / 2
    # the pose change is a rotation: its strain is second order; measure the symmetric part
    magnitude = strain.pow(2).sum(dim=(1, 2)).sqrt()[0]
    crop = tuple(slice(0, n - 1) for n in shape)
    labels = torch.from_numpy(tissue.fixed_labels)[crop]
    bone = magnitude[labels == TISSUE_LABELS["bone"]].median()
    lung = magnitude[labels == TISSUE_LABELS["lung"]].median()
    assert bone < 0.5 * lung
    det = torch.linalg.det(
        (jac + torch.eye(len(shape)).view(1, len(shape), len(shape), *[1] * len(shape)))
        .movedim(1, -1)
        .movedim(1, -1)
    )
    assert float(det.min()) > 0.1


def test_unknown_motion_is_an_input_error():
    with pytest.raises(InputError, match=r"'motion' must be one of \('breathing', 'tissue'\)"):
        generate_case((16, 16, 16), motion="sliding")
    with pytest.raises(ConfigError, match=r"motion"):
        load_config({**per_label_config({}), "data": {"phantom": {"motion": "x"}}})


# -- end to end: train, register, sweep ---------------------------------------------------------
@pytest.fixture(scope="module")
def tissue_checkpoint(tiny_phantom, tmp_path_factory):
    from regzoo.training import train

    run_dir = tmp_path_factory.mktemp("runs") / "tissue"
    overrides = [*tiny_overrides(tiny_phantom, run_dir), "data.labels=null"]
    config = load_config(TISSUE_CONFIG, overrides)
    return train(config)


def test_tissue_config_trains_and_takes_labels_from_the_dataset(tissue_checkpoint):
    from regzoo.checkpoint import load_model

    model = load_model(tissue_checkpoint)
    assert model.config.data.labels == LABELS
    assert [n.split(".", 1)[1] for n in model.space.names] == [
        f"{p}@{t}" for p in ("lam", "mu") for t in ("lung", "soft_tissue", "bone")
    ]


def test_register_with_per_label_values(tissue_checkpoint, tiny_phantom, tmp_path, capsys):
    fixed = tiny_phantom / "imagesTr" / "PhantomCT_0003_0000.nii.gz"
    moving = tiny_phantom / "imagesTr" / "PhantomCT_0003_0001.nii.gz"
    labels = tiny_phantom / "labelsTr" / "PhantomCT_0003_0000.nii.gz"
    base = ["register", "--model", str(tissue_checkpoint), "--fixed", str(fixed)]
    base += ["--moving", str(moving), "--param", "mu@lung=0.05", "--param", "mu@bone=50"]
    out = tmp_path / "out"
    args = [*base, "--refine", "2", "--fixed-labels", str(labels), "--figure", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mu@lung=0.05," in printed and "mu@bone=50\n" in printed
    assert (out / "figure.png").is_file()
    from regzoo.io import read_volume

    mu = read_volume(out / "map_linear_elastic.mu.nii.gz").data
    tissue = read_volume(labels).data
    assert np.allclose(mu[tissue == 1], 0.05) and np.allclose(mu[tissue == 3], 50)
    assert np.allclose(mu[tissue == 4], 1.0)  # heart: background
    assert main([*base, "--refine", "2", "--out", str(tmp_path / "o2")]) == 2
    assert "--fixed-labels" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o3")]) == 0  # the network alone needs no labels


def test_sweep_over_two_labels_writes_the_heat_map(tissue_checkpoint, tiny_phantom, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tissue_checkpoint), "--data", str(tiny_phantom)]
    args += ["--grid", "mu@lung=0.01:1:2", "--grid", "mu@bone=1:100:2", "--optimize"]
    args += ["--optimize-steps", "2", "--refine", "2", "--figure", "--out", str(out)]
    assert main(args) == 0
    assert (out / "heatmap.png").is_file() and (out / "overlay.png").is_file()
    report = json.loads((out / "sweep.json").read_text())
    assert report["names"] == ["linear_elastic.mu@lung", "linear_elastic.mu@bone"]
    assert set(report["optimized_per_pair"][0]["params"]) >= set(report["names"])


def test_evaluate_with_per_label_values(tissue_checkpoint, tiny_phantom, tmp_path):
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(tissue_checkpoint), "--data", str(tiny_phantom)]
    args += ["--param", "mu@lung=0.1", "--refine", "2", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["params"]["linear_elastic.mu@lung"] == pytest.approx(0.1)
    assert "dice_labels" in report["mean"]
