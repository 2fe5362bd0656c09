"""End to end on the tiny phantom: register, evaluate, sweep (the trained fixture)."""

import json
import shutil
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from regzoo import sweeping
from regzoo._errors import InputError
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.inference import register
from regzoo.refinement import RefineOptions
from regzoo.sweeping import default_batch_size, optimize_parameters, parse_grid, sweep


def pair_paths(root, case="0003"):
    images = root / "imagesTr"
    return (
        images / f"PhantomCT_{case}_0000.nii.gz",
        images / f"PhantomCT_{case}_0001.nii.gz",
        root / "masksTr" / f"PhantomCT_{case}_0001.nii.gz",
    )


def register_args(checkpoint, fixed, moving, out) -> list[str]:
    """The required arguments of `regzoo register`."""
    return [
        "register",
        "--model",
        str(checkpoint),
        "--fixed",
        str(fixed),
        "--moving",
        str(moving),
        "--out",
        str(out),
    ]


def sweep_args(checkpoint, data, out, *extra: str) -> list[str]:
    """`regzoo sweep` arguments: the model, data and output folder, then ``extra``."""
    return ["sweep", "--model", str(checkpoint), "--data", str(data), *extra, "--out", str(out)]


def test_register_cli_outputs_reproduce_through_scipy(tiny_checkpoint, tiny_phantom, tmp_path):
    fixed, moving, seg = pair_paths(tiny_phantom)
    out = tmp_path / "reg"
    extra = ["--param", "mu=0.2", "--param", "linear_elastic.lam=0.4", "--moving-seg", str(seg)]
    code = main([*register_args(tiny_checkpoint, fixed, moving, out), *extra, "--figure"])
    assert code == 0
    for name in (
        "disp.nii.gz",
        "warped.nii.gz",
        "jacdet.nii.gz",
        "figure.png",
        "warped_PhantomCT_0003_0001.nii.gz",
    ):
        assert (out / name).is_file(), name
    disp_img = nib.load(out / "disp.nii.gz")
    assert disp_img.shape == (32, 32, 32, 3)
    assert np.allclose(disp_img.affine, nib.load(fixed).affine)
    disp = disp_img.get_fdata()
    # an independent warp: scipy map_coordinates at x + u(x), order 1, edge values outside
    grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), axis=0)
    coords = grid + np.moveaxis(disp, -1, 0)
    expected = ndimage.map_coordinates(
        nib.load(moving).get_fdata(), coords, order=1, mode="nearest"
    )
    written = nib.load(out / "warped.nii.gz").get_fdata()
    assert np.abs(written - expected).max() < 1e-2
    labels = np.unique(nib.load(out / "warped_PhantomCT_0003_0001.nii.gz").get_fdata())
    assert set(labels) <= {0.0, 1.0}


def test_register_api_and_bad_input(tiny_checkpoint, tiny_phantom):
    model = load_model(tiny_checkpoint)
    fixed, moving, _ = pair_paths(tiny_phantom)
    result = register(model, fixed, moving, lam=0.1, mu=0.05)
    assert result.displacement.shape == (3, 32, 32, 32)
    assert result.params == {
        "linear_elastic.lam": pytest.approx(0.1),
        "linear_elastic.mu": pytest.approx(0.05),
    }
    with pytest.raises(ValueError, match=r"'linear_elastic.mu'=150.0 is out of range \[0.01, 100"):
        register(model, fixed, moving, mu=150)
    with pytest.raises(KeyError, match="unknown free parameter 'nu'"):
        register(model, fixed, moving, nu=0.1)
    with pytest.raises(FileNotFoundError, match="image not found"):
        register(model, fixed.with_name("missing.nii.gz"), moving)
    with pytest.raises(
        ValueError, match=r"different grids: fixed image: 32x32x32.* vs moving image: 32x32x16"
    ):
        register(model, torch.zeros(32, 32, 32), torch.zeros(32, 32, 16))
    bad = torch.zeros(32, 32, 32)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        register(model, bad, torch.zeros(32, 32, 32))


def test_register_cli_errors(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    fixed, moving, _ = pair_paths(tiny_phantom)
    out = tmp_path / "reg"
    args = register_args(tiny_checkpoint, fixed, moving, out)
    assert main([*args, "--param", "mu=700"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([*args, "--param", "mu"]) == 2
    assert "must look like NAME=NUMBER" in capsys.readouterr().err
    assert main([*args, "--moving-seg", str(tmp_path / "missing_seg.nii.gz")]) == 2
    assert "segmentation 'missing_seg' not found" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_true_displacements_gives_near_zero_tre(tiny_phantom, tmp_path, capsys):
    disp_dir = tmp_path / "gt"
    disp_dir.mkdir()
    for path in (tiny_phantom / "gtdispTr").glob("*.nii.gz"):
        case = path.name.split("_")[1].split(".")[0]
        shutil.copy(path, disp_dir / f"disp_{case}_{case}.nii.gz")
    out = tmp_path / "gt.json"
    evaluate = ["evaluate", "--data", str(tiny_phantom), "--disp-dir", str(disp_dir), "--out"]
    assert main([*evaluate, str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mean"]["tre_mm"] < 0.05 * report["mean"]["tre_initial_mm"]
    assert report["mean"]["dice"] > 0.93
    assert report["mean"]["folding_fraction"] == 0.0
    assert out.with_suffix(".csv").read_text().startswith("fixed_id,moving_id,dice")
    (disp_dir / "disp_0003_0003.nii.gz").unlink()
    capsys.readouterr()
    code = main([*evaluate, str(tmp_path / "second.json")])
    assert code == 2
    assert "displacement not found" in capsys.readouterr().err
    assert not (tmp_path / "second.json").exists()


def test_evaluate_model_cli(tiny_checkpoint, tiny_phantom, tmp_path):
    out = tmp_path / "model.json"
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(tiny_phantom),
                "--model",
                str(tiny_checkpoint),
                "--param",
                "mu=0.3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["params"]["linear_elastic.mu"] == pytest.approx(0.3)
    assert {"dice", "tre_mm", "tre_initial_mm", "sdlogj", "folding_fraction", "seconds"} <= set(
        report["mean"]
    )
    assert main(["evaluate", "--data", str(tiny_phantom), "--out", str(out)]) == 2


def test_sweep_cli_writes_the_report(tiny_checkpoint, tiny_phantom, tmp_path):
    out = tmp_path / "sweep"
    extra = ["--grid", "lam=0.01:100:2", "--grid", "mu=0.01:1:3", "--optimize"]
    extra += ["--optimize-steps", "2", "--refine", "2", "--figure"]
    assert main(sweep_args(tiny_checkpoint, tiny_phantom, out, *extra)) == 0
    for name in (
        "metrics.csv",
        "settings.csv",
        "sweep.json",
        "heatmap.png",
        "overlay.png",
        "summary.md",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "sweep.json").read_text())
    assert len(report["settings"]) == 6 and report["metric"] == "dice"
    assert report["best"]["dice"] == max(s["dice"] for s in report["settings"])
    assert len(report["best_per_pair"]) == 1 and len(report["optimized_per_pair"]) == 1
    # START:STOP:COUNT is spaced on each parameter's own (log) scale
    assert report["axes"][1] == pytest.approx([0.01, 0.1, 1.0])
    assert set(report["comparison"]) == {"identity", "network", "refined"}
    assert report["comparison"]["identity"]["sdlogj"] == 0.0
    summary = (out / "summary.md").read_text()
    assert "Best parameters for the data set" in summary
    assert "| refined |" in summary and "seconds per pair" in summary
    assert "regzoo explore --model" in summary and "--moving-seg" in summary


def test_sweep_batches_equal_single_registrations(tiny_checkpoint, tiny_phantom):
    model = load_model(tiny_checkpoint)
    dataset = Learn2RegDataset(tiny_phantom, "val", annotations=True)
    grid = parse_grid(["mu=0.1,0.9", "lam=0.2"])
    result = sweep(model, dataset, grid, batch_size=2, progress=False)
    assert result.names == ["linear_elastic.mu", "linear_elastic.lam"]
    assert result.metric_grid("dice").shape == (2, 1)
    for setting in result.rows:
        single = sweep(
            model,
            dataset,
            {"mu": [setting["linear_elastic.mu"]], "lam": [0.2]},
            batch_size=1,
            progress=False,
        ).rows[0]
        assert single["sdlogj"] == pytest.approx(setting["sdlogj"], rel=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        sweep(model, dataset, {"mu": [200.0]}, progress=False)
    with pytest.raises(ValueError, match="NAME=START:STOP:COUNT"):
        parse_grid(["mu=0:1"])
    with pytest.raises(ValueError, match="more than 10000"):
        parse_grid(["lam=0:1:1000000000"])
    with pytest.raises(ValueError, match="more than 10000"):
        parse_grid(["lam=0:1:1000", "mu=0:1:1000"])
    with pytest.raises(ValueError, match="COUNT must be at least 1"):
        parse_grid(["lam=0:1:0"])
    with pytest.raises(ValueError, match="log scale: grid ends must be > 0"):
        sweep(model, dataset, parse_grid(["mu=0:1:3"]), progress=False)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        sweep(model, dataset, grid, batch_size=0, progress=False)


def test_sweep_batch_size_defaults_to_one_setting_per_pass_on_cpu(
    tiny_checkpoint, tiny_phantom, monkeypatch
):
    model = load_model(tiny_checkpoint)
    dataset = Learn2RegDataset(tiny_phantom, "val", annotations=True)
    assert default_batch_size(torch.device("cpu")) == 1
    assert default_batch_size(torch.device("cuda")) == 8
    grid = parse_grid(["mu=0.1,0.5,0.9"])
    passes: list[int] = []
    register_one = sweeping._register

    def counted(model: Any, fixed: torch.Tensor, *args: Any) -> Any:
        passes.append(fixed.shape[0])
        return register_one(model, fixed, *args)

    monkeypatch.setattr(sweeping, "_register", counted)
    by_default = sweep(model, dataset, grid, progress=False)
    assert passes == [1, 1, 1] * len(dataset)  # one setting per forward pass on a CPU
    batched = sweep(model, dataset, grid, batch_size=3, progress=False)
    assert passes[len(dataset) * 3 :] == [3] * len(dataset)
    for one, other in zip(by_default.rows, batched.rows, strict=True):
        assert one["sdlogj"] == pytest.approx(other["sdlogj"], rel=1e-4)


def test_optimize_stays_in_bounds_and_improves_dice(tiny_checkpoint, tiny_phantom):
    model = load_model(tiny_checkpoint)
    item = Learn2RegDataset(tiny_phantom, "val", annotations=True)[0]
    found = optimize_parameters(model, item, steps=5, lr=0.3)
    assert found["criterion"] == "soft_dice" and len(found["history"]) == 5
    for name, value in found["params"].items():
        spec = model.space[name]
        assert spec.low <= value <= spec.high
    assert max(found["history"]) >= found["history"][0]
    only_mu = optimize_parameters(model, item, names=["mu"], steps=2, criterion="loss")
    assert only_mu["params"]["linear_elastic.lam"] == pytest.approx(
        model.space["linear_elastic.lam"].default
    )


def test_a_parameter_given_twice_is_refused(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    fixed, moving, _ = pair_paths(tiny_phantom)
    args = register_args(tiny_checkpoint, fixed, moving, tmp_path / "out")
    assert main([*args, "--param", "lam=0.1", "--param", "linear_elastic.lam=0.9"]) == 2
    assert "'linear_elastic.lam' given twice" in capsys.readouterr().err
    assert main([*args, "--param", "lam=0.1", "--param", "lam=0.9"]) == 2
    assert "--param lam given twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_exact_sweep_scores_refined_fields(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    model = load_model(tiny_checkpoint)
    dataset = Learn2RegDataset(tiny_phantom, "val", annotations=True)
    grid = {"lam": [1.0], "mu": [0.1, 1.0]}
    network = sweep(model, dataset, grid, progress=False)
    exact = sweep(model, dataset, grid, refine=RefineOptions(steps=20), progress=False)
    for fast, refined in zip(network.rows, exact.rows, strict=True):
        assert refined["tre_mm"] < fast["tre_mm"]
    extra = ["--grid", "mu=0.1,1", "--refine-grid"]
    code = main(sweep_args(tiny_checkpoint, tiny_phantom, tmp_path / "s", *extra))
    assert code == 2
    assert "--refine-grid needs --refine N" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_max_folding_keeps_folded_settings_from_being_chosen():
    from regzoo.sweeping import SweepResult

    settings = [
        {"mu": 0.01, "tre_mm": 1.5, "folding_fraction": 1e-3},
        {"mu": 1.0, "tre_mm": 1.7, "folding_fraction": 0.0},
        {"mu": 100.0, "tre_mm": 9.0, "folding_fraction": 0.0},
    ]
    rows = [{**s, "fixed_id": "1", "moving_id": "1"} for s in settings]
    free = SweepResult(names=["mu"], axes=[[0.01, 1.0, 100.0]], rows=rows, settings=settings)
    assert free.best("tre_mm")["mu"] == 0.01
    strict = SweepResult(
        names=["mu"], axes=[[0.01, 1.0, 100.0]], rows=rows, settings=settings, max_folding=0.0
    )
    assert strict.best("tre_mm")["mu"] == 1.0
    assert [s["mu"] for s in strict.ranked("tre_mm")] == [1.0, 100.0, 0.01]
    assert strict.best_per_pair("tre_mm")[0]["mu"] == 1.0
    none_ok = SweepResult(
        names=["mu"], axes=[[0.01]], rows=rows[:1], settings=settings[:1], max_folding=0.0
    )
    with pytest.raises(ValueError, match="no setting keeps the folded-voxel fraction"):
        none_ok.best("tre_mm")


def test_exact_sweep_report_sets_the_network_choice_beside_the_exact_one(
    tiny_checkpoint, tiny_phantom, tmp_path
):
    out = tmp_path / "exact"
    extra = ["--grid", "mu=0.01:100:3", "--refine", "3", "--refine-grid", "--metric", "tre_mm"]
    assert main(sweep_args(tiny_checkpoint, tiny_phantom, out, *extra)) == 0
    report = json.loads((out / "sweep.json").read_text())
    side = report["network_sweep"]
    exact_choice = report["best"]["linear_elastic.mu"]
    network_choice = side["network_choice"]["linear_elastic.mu"]
    axis = report["axes"][0]
    assert side["grid_steps"] == {
        "linear_elastic.mu": abs(axis.index(exact_choice) - axis.index(network_choice))
    }
    # each choice is scored by the other sweep too
    assert side["exact_at_network_choice"]["linear_elastic.mu"] == network_choice
    assert side["network_at_exact_choice"]["linear_elastic.mu"] == exact_choice
    assert "The network's own sweep next to the exact sweep" in (out / "summary.md").read_text()


def test_exact_sweep_refines_under_the_refine_options(tiny_checkpoint, tiny_phantom, tmp_path):
    extra = ["--grid", "mu=0.1,1", "--refine", "3", "--refine-grid", "--metric", "tre_mm"]
    plain, other = tmp_path / "plain", tmp_path / "ngf"
    assert main(sweep_args(tiny_checkpoint, tiny_phantom, plain, *extra)) == 0
    options = ["--refine-similarity", "model + ngf", "--refine-split", "1:1:1"]
    assert main(sweep_args(tiny_checkpoint, tiny_phantom, other, *extra, *options)) == 0
    report = json.loads((other / "sweep.json").read_text())
    refined = RefineOptions(steps=3, similarity="model + ngf", split="1:1:1")
    assert RefineOptions.from_dict(report["refine"]) == refined
    assert json.loads((plain / "sweep.json").read_text())["refine"] == {
        **refined.to_dict(),
        "similarity": None,
        "split": None,
    }
    # the same settings, refined under another objective: other fields, other scores
    before = [r["tre_mm"] for r in json.loads((plain / "sweep.json").read_text())["settings"]]
    after = [r["tre_mm"] for r in report["settings"]]
    assert before != after
    assert "similarity model + ngf" in (other / "summary.md").read_text()


def test_register_choose_refines_the_grid_under_the_refine_options(
    tiny_checkpoint, tiny_phantom, tmp_path
):
    from regzoo.checkpoint import load_model
    from regzoo.inference import choose_parameters

    model = load_model(tiny_checkpoint)
    fixed, moving, _ = pair_paths(tiny_phantom)
    grid = {"mu": [0.1, 1.0]}
    rows = [
        choose_parameters(
            model, fixed, moving, grid, "discrepancy", refine_grid=options, max_folding=None
        )[1].rows
        for options in (
            RefineOptions(steps=3),
            RefineOptions(steps=3, similarity="model + ngf", split="1:1:1"),
        )
    ]
    assert [r["similarity"] for r in rows[0]] != [r["similarity"] for r in rows[1]]
    # the grid in the CLI's text forms, read by the CLI's parser: the same settings
    for text in ("0.1:1:2", "0.1,1"):
        chosen, result = choose_parameters(
            model, fixed, moving, {"mu": text}, "discrepancy", max_folding=None
        )
        assert result.axes == [[0.1, 1.0]] and chosen["linear_elastic.mu"] in (0.1, 1.0)
    with pytest.raises(InputError, match=r"grid entry 'mu=0\.1:1' must look like"):
        choose_parameters(model, fixed, moving, {"mu": "0.1:1"}, "discrepancy")
    # the former form (steps and a mapping) still works, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="pass regzoo.RefineOptions"):
        _, former = choose_parameters(
            model,
            fixed,
            moving,
            grid,
            "discrepancy",
            refine_grid=3,  # type: ignore[arg-type]
            refine_options={"similarity": "model + ngf", "split": [1.0, 1.0, 1.0]},
            max_folding=None,
        )
    assert [r["similarity"] for r in former.rows] == [r["similarity"] for r in rows[1]]
    out = tmp_path / "chosen"
    args = ["register", "--model", str(tiny_checkpoint), "--fixed", str(fixed)]
    args += ["--moving", str(moving), "--choose", "discrepancy", "--grid", "mu=0.1,1"]
    args += ["--refine", "2", "--refine-grid", "--refine-similarity", "model + ngf"]
    assert main([*args, "--figure", "--out", str(out)]) == 0
    assert (out / "figure.png").is_file() and (out / "choice.json").is_file()
    bad = main([*args[:-2], "--refine-similarity", "nfg", "--out", str(tmp_path / "never")])
    assert bad == 2 and not (tmp_path / "never").exists()
