"""Instance optimisation: it lowers its own objective, for any regularizer, in 2D and 3D."""

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from test_inference_cli import pair_paths, register_args

from regzoo import UnknownNameError, load_plugin
from regzoo._errors import InputError
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.cli.arguments import add_max_folding_argument
from regzoo.cli.refine_flags import add_refine_options
from regzoo.config import TermConfig, load_config
from regzoo.data.learn2reg import Learn2RegDataset
from regzoo.inference import register
from regzoo.metrics import folding_fraction, target_registration_error
from regzoo.objective import Objective
from regzoo.refinement import RefineOptions, RefineTrace, refine, refine_field
from regzoo.resolve import build_objective, build_term
from regzoo.similarity import LNCC, MINDSSC, MSE, WeightedSum, parse_similarity
from regzoo.spatial import integrate_velocity, warp

ROOT = Path(__file__).resolve().parents[1]
FILE_PLUGIN = ROOT / "plugins" / "file_plugin_example" / "directional_diffusion.py"
# the refinement configuration of docs/results.md ("Toward the limit"): 30 iterations, half of
# them at full resolution, under the training similarity plus NGF, at lam = mu = 1
CHOSEN: dict[str, Any] = {"steps": 30, "lr": 0.1, "grid_downsize": 2, "levels": 3}
CHOSEN["split"] = (1.0, 1.0, 2.0)
CHOSEN_SIMILARITY = "model + ngf"
CHOSEN_PARAMS = {"lam": 1.0, "mu": 1.0}


def blob_pair(shift: float, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2D Gaussian blob (fixed) and the same blob shifted along axis 0 (moving)."""
    grid = torch.stack(
        torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 2, indexing="ij")
    )
    centre = torch.tensor([size / 2, size / 2]).view(2, 1, 1)
    fixed = torch.exp(-((grid - centre) ** 2).sum(0) / 40.0)
    moving = torch.exp(
        -((grid - centre - torch.tensor([shift, 0.0]).view(2, 1, 1)) ** 2).sum(0) / 40.0
    )
    return fixed[None, None], moving[None, None]


@pytest.fixture(scope="module")
def plugin_objective() -> Objective:
    load_plugin(str(FILE_PLUGIN))
    term = build_term(
        TermConfig(
            name="directional_diffusion",
            alpha=0.01,
            params={"axial_weight": {"low": 0.01, "high": 1}},
        )
    )
    return Objective(MSE(), [term])


def test_refine_lowers_its_objective_in_2d_with_a_plugin(plugin_objective):
    fixed, moving = blob_pair(shift=3.0)
    values = plugin_objective.to_tensor({"axial_weight": 0.1})
    trace = RefineTrace()
    out = refine_field(
        plugin_objective,
        fixed,
        moving,
        torch.zeros(1, 2, 32, 32),
        values,
        RefineOptions(steps=60, lr=0.2, grid_downsize=1, levels=1),
        trace=trace,
    )
    assert len(trace.objective) == 61
    assert trace.objective[-1] < 0.6 * trace.objective[0]
    assert trace.objective[-1] <= 1.05 * min(trace.objective)  # converged, not oscillating
    # the blob moved +3 voxels along axis 0: the field at its centre points that way
    assert 1.5 < float(out.displacement[0, 0, 16, 16]) < 4.0
    assert out.velocity is None


def test_refine_is_deterministic_and_diffeomorphic(plugin_objective):
    fixed, moving = blob_pair(shift=4.0)
    values = plugin_objective.to_tensor({"axial_weight": 1.0})
    options = RefineOptions(steps=25, lr=0.3, int_steps=7, levels=1)
    init = torch.zeros(1, 2, 32, 32)
    first = refine_field(plugin_objective, fixed, moving, init, values, options)
    second = refine_field(plugin_objective, fixed, moving, init, values, options)
    assert torch.equal(first.displacement, second.displacement)
    assert first.velocity is not None
    assert torch.allclose(first.displacement, integrate_velocity(first.velocity, 7))
    assert folding_fraction(first.displacement[0]) == 0.0
    mse = MSE()
    assert mse(fixed, warp(moving, first.displacement)) < 0.5 * mse(fixed, moving)


def test_refine_rejects_bad_input(plugin_objective):
    fixed, moving = blob_pair(shift=1.0)
    values = plugin_objective.to_tensor({})
    with pytest.raises(ValueError, match="'init' must have shape"):
        refine_field(plugin_objective, fixed, moving, torch.zeros(1, 3, 32, 32), values)
    with pytest.raises(ValueError, match="'values' must have shape"):
        refine_field(plugin_objective, fixed, moving, torch.zeros(1, 2, 32, 32), values[:, :0])
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        RefineOptions(steps=-1)
    with pytest.raises(ValueError, match="needs int_steps > 0"):
        RefineOptions(regularize="velocity")


def test_refine_of_a_model_lowers_the_model_objective_in_3d(tiny_checkpoint, tiny_phantom):
    model = load_model(tiny_checkpoint)
    item = Learn2RegDataset(tiny_phantom, "val", intensity_window=(-1000, 500))[0]
    fixed, moving = item["fixed"][None], item["moving"][None]
    trace = RefineTrace()
    params = {"lam": 0.1, "mu": 0.1}
    spacing = item["spacing"]
    out = refine(
        model,
        fixed,
        moving,
        params,
        RefineOptions(steps=15, levels=1),
        trace=trace,
        spacing=spacing,
    )
    assert out.displacement.shape == (1, 3, 32, 32, 32)
    assert trace.objective[-1] < trace.objective[0]
    # the first entry is the objective of the network's own field at the same parameters
    values = model.parameter_tensor(params, 1)
    with torch.no_grad():
        network = model(fixed, moving, values).displacement
        energy_spacing = model.energy_spacing(spacing)
        start = model.objective(fixed, warp(moving, network), network, values, energy_spacing).total
    assert trace.objective[0] == pytest.approx(float(start), rel=0.05, abs=1e-3)
    # the default three-level pyramid ends on the same full-resolution objective, lower still
    pyramid = RefineTrace()
    refine(model, fixed, moving, params, RefineOptions(steps=15), trace=pyramid, spacing=spacing)
    assert pyramid.objective[-1] < float(start)


def test_register_refine_lowers_tre_on_a_phantom_pair(tiny_checkpoint, tiny_phantom, tmp_path):
    fixed, moving, _ = pair_paths(tiny_phantom)
    dataset = Learn2RegDataset(tiny_phantom, "val", annotations=True)
    item = dataset[0]
    model = load_model(tiny_checkpoint)
    network = register(model, fixed, moving, lam=1.0, mu=1.0)
    out = tmp_path / "refined"
    args = [*register_args(tiny_checkpoint, fixed, moving, out), "--refine", "30"]
    assert main([*args, "--param", "lam=1", "--param", "mu=1"]) == 0
    refined = torch.from_numpy(
        np.moveaxis(nib.load(out / "disp.nii.gz").get_fdata(dtype=np.float32), -1, 0).copy()
    )

    def tre(displacement: torch.Tensor) -> float:
        return float(
            target_registration_error(
                item["fixed_keypoints"], item["moving_keypoints"], displacement, item["spacing"]
            ).mean()
        )

    assert tre(refined) < 0.9 * tre(network.displacement)


def test_refine_argument_errors(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    fixed, moving, _ = pair_paths(tiny_phantom)
    with pytest.raises(SystemExit):
        main([*register_args(tiny_checkpoint, fixed, moving, tmp_path / "x"), "--refine", "-3"])
    assert "must be at least 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    code = main(
        [
            "evaluate",
            "--data",
            str(tiny_phantom),
            "--disp-dir",
            str(tmp_path),
            "--refine",
            "5",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert "--refine needs --model" in capsys.readouterr().err


def test_pyramid_levels_end_on_the_exact_objective(plugin_objective):
    fixed, moving = blob_pair(shift=5.0)
    values = plugin_objective.to_tensor({"axial_weight": 0.1})
    init = torch.zeros(1, 2, 32, 32)
    trace = RefineTrace()
    options = RefineOptions(steps=40, lr=0.2, grid_downsize=1, levels=2)
    out = refine_field(plugin_objective, fixed, moving, init, values, options, trace=trace)
    assert len(trace.objective) == 40 + 2  # one closing evaluation per level
    # the final entry is the full-resolution objective of the returned field
    final = plugin_objective(fixed, warp(moving, out.displacement), out.displacement, values)
    assert trace.objective[-1] == pytest.approx(float(final.total), rel=1e-5)
    single = RefineTrace()
    refine_field(
        plugin_objective,
        fixed,
        moving,
        init,
        values,
        RefineOptions(steps=40, lr=0.2, grid_downsize=1),
        trace=single,
    )
    assert trace.objective[-1] < single.objective[0]
    with pytest.raises(ValueError, match="levels must be >= 1"):
        RefineOptions(levels=0)


def test_refine_under_another_similarity_warps_precomputed_descriptors(plugin_objective):
    fixed, moving = blob_pair(shift=3.0)
    values = plugin_objective.to_tensor({"axial_weight": 0.1})
    init = torch.zeros(1, 2, 32, 32)
    mind = MINDSSC()
    trace = RefineTrace()
    options = RefineOptions(steps=40, lr=0.2, grid_downsize=1, levels=2)
    out = refine_field(
        plugin_objective,
        fixed,
        moving,
        init,
        values,
        options,
        trace=trace,
        similarity=WeightedSum([(10.0, mind)]),
    )
    # the first entry: the descriptors of the moving image warped by zero are its descriptors
    energy = plugin_objective.combine(torch.zeros(1), init, values).total
    start = 10.0 * mind(fixed, moving) + energy
    coarse = [n // 2 for n in fixed.shape[2:]]
    assert trace.objective[-1] < trace.objective[0]
    assert trace.iterations == [20, 20]
    assert float(mind(fixed, warp(moving, out.displacement))) < 0.5 * float(start)
    assert 1.5 < float(out.displacement[0, 0, 16, 16]) < 4.0
    assert coarse == [16, 16]


def test_early_stopping_reports_the_iterations_that_ran(plugin_objective):
    fixed, moving = blob_pair(shift=2.0)
    # LNCC: an objective near -1 at its optimum, whose relative change is meaningful
    plugin_objective = Objective(LNCC(window=5), plugin_objective.terms)
    values = plugin_objective.to_tensor({"axial_weight": 0.1})
    init = torch.zeros(1, 2, 32, 32)
    full, stopped = RefineTrace(), RefineTrace()
    base: dict[str, Any] = {"steps": 200, "lr": 0.2, "grid_downsize": 1, "levels": 1}
    refine_field(plugin_objective, fixed, moving, init, values, RefineOptions(**base), trace=full)
    refine_field(
        plugin_objective,
        fixed,
        moving,
        init,
        values,
        RefineOptions(**base, tol=1e-3),
        trace=stopped,
    )
    assert full.iterations == [200]
    assert 5 < stopped.total_iterations < 200
    # stopped where the objective had flattened: within 5 % of the full run's decrease
    decrease = full.objective[0] - full.objective[-1]
    assert stopped.objective[-1] - full.objective[-1] < 0.05 * decrease


def test_lbfgs_and_the_pyramid_split(plugin_objective):
    fixed, moving = blob_pair(shift=3.0)
    values = plugin_objective.to_tensor({"axial_weight": 0.1})
    init = torch.zeros(1, 2, 32, 32)
    options = RefineOptions(steps=40, lr=1.0, grid_downsize=1, levels=1, optimizer="lbfgs")
    trace = RefineTrace()
    out = refine_field(plugin_objective, fixed, moving, init, values, options, trace=trace)
    assert trace.total_iterations <= 40
    assert trace.objective[-1] < 0.6 * trace.objective[0]
    assert 1.5 < float(out.displacement[0, 0, 16, 16]) < 4.0
    assert RefineOptions(steps=30, levels=3, split=(1, 1, 2)).steps_per_level() == [7, 7, 16]
    assert RefineOptions(steps=30).steps_per_level() == [10, 10, 10]
    with pytest.raises(ValueError, match="3 positive shares"):
        RefineOptions(levels=3, split=(1.0, 2.0))
    with pytest.raises(ValueError, match="'adam' or 'lbfgs'"):
        RefineOptions(optimizer="sgd")
    with pytest.raises(ValueError, match="tol must be >= 0"):
        RefineOptions(tol=-1.0)


def test_refine_similarity_from_the_cli_in_3d(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    report = tmp_path / "r.json"
    args = ["evaluate", "--data", str(tiny_phantom), "--model", str(tiny_checkpoint)]
    args += ["--refine", "12", "--refine-tol", "1e-2"]
    spec = "model + 5*mind_ssc"
    good = [*args, "--refine-similarity", spec, "--refine-split", "1:1:2"]
    assert main([*good, "--out", str(report)]) == 0
    saved = json.loads(report.read_text())
    expected = RefineOptions(steps=12, similarity=spec, split=(1, 1, 2), tol=0.01)
    assert saved["refine"] == expected.to_dict()
    assert RefineOptions.from_dict(saved["refine"]) == expected
    assert 1 <= saved["pairs"][0]["refine_iterations"] <= 12
    assert "refine_iterations" in saved["mean"]
    code = main([*args, "--refine-similarity", "mind", "--out", str(report)])
    assert code == 2
    assert "did you mean 'mind_ssc'" in capsys.readouterr().err
    code = main([*args, "--refine-similarity", "model + -2*ngf", "--out", str(report)])
    assert code == 2
    assert "positive WEIGHT" in capsys.readouterr().err
    code = main([*args, "--refine-split", "1:x:2", "--out", str(report)])
    assert code == 2
    assert "--refine-split: split must look like A:B:C" in capsys.readouterr().err
    code = main([*args, "--refine-split", "1:2", "--out", str(report)])
    assert code == 2
    assert "--refine-split: split must give 3 positive shares" in capsys.readouterr().err
    assert json.loads(report.read_text())["refine"]["similarity"] == spec  # untouched


def test_the_chosen_configuration_on_the_2d_phantom(tiny_phantom_2d):
    """The configuration of docs/results.md in 2D, from a zero field, with the quickstart's
    objective (multi-scale LNCC and linear elasticity in mm) plus NGF."""
    objective = build_objective(load_config(ROOT / "configs" / "quickstart.yaml"))
    values = objective.to_tensor(CHOSEN_PARAMS)
    item = Learn2RegDataset(
        tiny_phantom_2d, "val", intensity_window=(-1000, 500), annotations=True
    )[0]
    fixed, moving = item["fixed"][None], item["moving"][None]
    trace = RefineTrace()
    out = refine_field(
        objective,
        fixed,
        moving,
        torch.zeros(1, 2, *fixed.shape[2:]),
        values,
        RefineOptions(**CHOSEN),
        spacing=torch.as_tensor(item["spacing"], dtype=torch.float32),
        trace=trace,
        similarity=parse_similarity(CHOSEN_SIMILARITY, trained=objective.similarity),
    )
    before = target_registration_error(
        item["fixed_keypoints"],
        item["moving_keypoints"],
        torch.zeros_like(out.displacement[0]),
        item["spacing"],
    ).mean()
    after = target_registration_error(
        item["fixed_keypoints"], item["moving_keypoints"], out.displacement[0], item["spacing"]
    ).mean()
    assert float(after) < 0.5 * float(before)
    assert folding_fraction(out.displacement[0]) == 0.0
    assert trace.iterations == [7, 7, 16]


def test_the_chosen_configuration_with_a_plugin_regularizer(plugin_objective):
    """The same similarity and schedule with the file plugin's regularizer (2D): the refined
    field moves the blob back, lowers the full-resolution objective and folds no voxel."""
    fixed, moving = blob_pair(shift=3.0)
    (plugin_term,) = plugin_objective.terms
    term = build_term(
        TermConfig(
            name=plugin_term.name,
            alpha=0.1,
            params={"axial_weight": {"low": 0.01, "high": 1}},
        )
    )
    objective = Objective(LNCC(window=5), [term])
    values = objective.to_tensor({"axial_weight": 0.1})
    similarity = parse_similarity(CHOSEN_SIMILARITY, trained=objective.similarity)
    trace = RefineTrace()
    zero = torch.zeros(1, 2, 32, 32)
    out = refine_field(
        objective,
        fixed,
        moving,
        zero,
        values,
        RefineOptions(**CHOSEN),
        trace=trace,
        similarity=similarity,
    )

    def full_objective(field: torch.Tensor) -> float:
        sim = similarity(fixed, warp(moving, field))  # LNCC + NGF
        return float(objective.combine(sim, field, values).total)

    assert full_objective(out.displacement) < full_objective(zero) - 0.01
    assert float(out.displacement[0, 0, 16, 16]) == pytest.approx(3.0, abs=0.3)
    assert folding_fraction(out.displacement[0]) == 0.0
    assert trace.iterations == [7, 7, 16]
    # the last entry of the trace is that objective at the final field
    assert trace.objective[-1] == pytest.approx(full_objective(out.displacement), rel=1e-4)


def test_refine_options_from_flags_and_back():
    from regzoo.cli.refine_flags import from_flags, to_flags

    options = from_flags(similarity="model + 0.5*ngf", split="1:1:2", tol=1e-3, steps=40)
    assert options == RefineOptions(
        steps=40, similarity="model + 0.5*ngf", split=(1, 1, 2), tol=1e-3
    )
    flags = to_flags(options)
    assert flags == [
        "--refine-similarity",
        "model + 0.5*ngf",
        "--refine-split",
        "1:1:2",
        "--refine-tol",
        "0.001",
    ]
    # the flags parsed back by a command give the same options
    parser = argparse.ArgumentParser()
    add_refine_options(parser)
    assert from_flags(parser.parse_args(flags), steps=40) == options
    assert from_flags() == RefineOptions() and to_flags(RefineOptions()) == []
    cases: list[tuple[dict[str, Any], str]] = [
        ({"similarity": "ngf +"}, "each term is"),
        ({"split": "1:2"}, "--refine-split: split must give 3 positive shares"),
        ({"split": "a:b:c"}, "--refine-split: split must look like A:B:C"),
        ({"split": "1:.:2"}, "--refine-split: split must look like A:B:C"),
        ({"tol": -1.0}, "--refine-tol: tol must be >= 0"),
        ({"tol": float("nan")}, "--refine-tol: tol must be >= 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            from_flags(**kwargs)


def test_refine_options_are_one_json_serialisable_form():
    options = RefineOptions(steps=60, similarity="mind_ssc", split="1:1:2", tol=1e-3)
    assert options.split == (1.0, 1.0, 2.0)  # the CLI's text form, read by the CLI's parser
    assert options == RefineOptions(steps=60, similarity="mind_ssc", split=[1, 1, 2], tol=1e-3)
    record = json.loads(json.dumps(options.to_dict()))
    assert record["split"] == [1.0, 1.0, 2.0] and "progress" not in record
    assert RefineOptions.from_dict(record) == options
    with pytest.raises(InputError, match=r"unknown setting\(s\) \['stepz'\]; known: steps"):
        RefineOptions.from_dict({"stepz": 3})
    with pytest.raises(InputError, match=r"split must look like A:B:C .* got '1:\.:2'"):
        RefineOptions(split="1:.:2")
    with pytest.raises(InputError, match="similarity must be a text"):
        RefineOptions(similarity=MSE())  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="did you mean 'mind_ssc'"):
        RefineOptions(similarity="mind")
    # the former forms still work, with a deprecation warning, and mean the same
    with pytest.warns(DeprecationWarning, match="pass regzoo.RefineOptions"):
        legacy = RefineOptions.from_legacy(60, {"similarity": "mind_ssc", "split": "1:1:2"}, "f")
    assert legacy == RefineOptions(steps=60, similarity="mind_ssc", split=(1, 1, 2))
    with pytest.warns(DeprecationWarning, match="as a mapping is deprecated"):
        assert RefineOptions.coerce({"steps": 5}) == RefineOptions(steps=5)
    assert RefineOptions.from_legacy(None, None, "f") is None
    assert RefineOptions.from_legacy(options, None, "f") is options
    with pytest.raises(InputError, match="give the settings once"):
        RefineOptions.from_legacy(options, {"tol": 0.1}, "f")


def test_one_form_and_one_default_in_every_public_function():
    """``refine``'s settings are a RefineOptions everywhere, ``refine_grid`` has one type and
    ``max_folding`` one default (0.0: sweep never recommends a folding field by default)."""
    from regzoo.evaluation import compare_refinement, evaluate_model
    from regzoo.explore.session import ExploreSession
    from regzoo.inference import choose_parameters, register
    from regzoo.report import overlay_figure, write_sweep_report
    from regzoo.study import run_sweep_study
    from regzoo.sweeping import sweep

    def annotation(function, name):
        return str(inspect.signature(function).parameters[name].annotation)

    for function, name in [
        (register, "refine"),
        (evaluate_model, "refine"),
        (compare_refinement, "refine"),
        (overlay_figure, "refine"),
        (write_sweep_report, "refine"),
        (sweep, "refine"),
        (run_sweep_study, "refine"),
        (run_sweep_study, "refine_grid"),
        (choose_parameters, "refine_grid"),
        (ExploreSession.__init__, "refine"),
    ]:
        assert annotation(function, name) == "RefineOptions | None", (function, name)
    assert str(inspect.signature(refine).parameters["options"].annotation).startswith(
        "RefineOptions"
    )
    defaults = {
        f.__name__: inspect.signature(f).parameters["max_folding"].default
        for f in (sweep, choose_parameters, run_sweep_study)
    }
    parser = argparse.ArgumentParser()
    add_max_folding_argument(parser)
    defaults["--max-folding"] = parser.parse_args([]).max_folding
    assert set(defaults.values()) == {0.0}, defaults


def test_refine_accepts_the_split_as_text_and_the_former_keywords(tiny_checkpoint, tiny_phantom):
    model = load_model(tiny_checkpoint)
    item = Learn2RegDataset(tiny_phantom, "val", intensity_window=(-1000, 500))[0]
    fixed, moving = item["fixed"][None], item["moving"][None]
    params, spacing = {"lam": 0.1, "mu": 0.1}, item["spacing"]
    new, old = RefineTrace(), RefineTrace()
    options = RefineOptions(steps=8, split="1:1:2")
    out = refine(model, fixed, moving, params, options, trace=new, spacing=spacing)
    with pytest.warns(DeprecationWarning, match=r"settings as keyword arguments \(split, steps\)"):
        again = refine(
            model, fixed, moving, params, steps=8, split="1:1:2", trace=old, spacing=spacing
        )
    assert new.iterations == old.iterations == [2, 2, 4]
    assert torch.allclose(out.displacement, again.displacement)
    with pytest.raises(InputError, match="give the settings once"):
        refine(model, fixed, moving, params, RefineOptions(steps=8), steps=4, spacing=spacing)
    with pytest.raises(InputError, match="give the similarity once"):
        refine(
            model,
            fixed,
            moving,
            params,
            RefineOptions(similarity="ngf"),
            similarity=MSE(),
            spacing=spacing,
        )
