"""Label-free parameter-choice criteria: known answers, the sweep's choices and report,
``register --choose`` end to end, plugins, and bad inputs."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from regzoo import UnknownNameError, criteria, load_plugin
from regzoo._errors import InputError
from regzoo.cli import main
from regzoo.config import load_config
from regzoo.criteria import ChoiceTable, label_free_measures
from regzoo.inference import choose_parameters
from regzoo.lightning_module import HyperRegistration
from regzoo.report import write_sweep_report
from regzoo.similarity import MSE
from regzoo.spatial import warp
from regzoo.sweeping import SweepResult

ROOT = Path(__file__).resolve().parents[1]
FILE_PLUGIN = ROOT / "plugins" / "file_plugin_example"


def table(**columns: list[float]) -> ChoiceTable:
    n = len(next(iter(columns.values())))
    settings = [{"k": float(i), **{key: v[i] for key, v in columns.items()}} for i in range(n)]
    return ChoiceTable(["k"], settings)


def pick(name: str, t: ChoiceTable, **options: float) -> int:
    return int(np.argmin(criteria.get(name)(**options)(t)))


# -- known answers on analytic tables ---------------------------------------------------------


def test_invertible_fit_takes_the_softest_setting_that_does_not_fold():
    # softer settings (larger k) match better; folding starts at k = 3
    t = table(similarity=[-0.5, -0.6, -0.7, -0.8, -0.9], folding_fraction=[0, 0, 0, 1e-4, 0.02])
    assert pick("invertible_fit", t) == 2


def test_discrepancy_takes_the_smoothest_setting_within_the_tolerance():
    # gain 1 - exp(-k): within 5 % of the best gain from k = 3 (0.950 of 0.993) on
    gain = 1 - np.exp(-np.arange(6.0))
    t = table(similarity=list(1 - gain), similarity_initial=[1.0] * 6, roughness=list(gain * 10))
    assert pick("discrepancy", t) == 3
    assert pick("discrepancy", t, tolerance=0.2) == 2  # 0.865 >= 0.8 * 0.993


def test_lcurve_finds_the_corner_of_an_l_shaped_front():
    # log roughness 0..5; similarity drops steeply up to k = 2, then flattens: corner at 2
    sim = [1.0, 0.5, 0.05, 0.04, 0.03, 0.02]
    rough = list(np.exp(np.arange(6.0)))
    assert pick("lcurve", table(similarity=sim, roughness=rough)) == 2
    # a dominated setting (worse on both) is never the corner
    t = table(similarity=[*sim, 0.9], roughness=[*rough, float(np.exp(4.5))])
    assert np.isinf(criteria.get("lcurve")()(t)[-1])


def test_inverse_consistency_takes_the_smallest_gap_relative_to_the_motion():
    t = table(
        inverse_consistency=[1.8, 1.2, 1.0, 1.9, 0.0],
        displacement_mean=[1.0, 2.0, 2.2, 2.5, 0.0],  # relative 1.8, 0.6, 0.45, 0.76; no motion
    )
    assert pick("inverse_consistency", t) == 2
    assert np.isinf(criteria.get("inverse_consistency")()(t)[-1])


# -- known answer on a synthetic pair: the true field is one of the settings --------------------


def _bump(shape: tuple[int, ...], amplitude: float) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    r2 = torch.stack([(g - s / 2) ** 2 for g, s in zip(grids, shape, strict=True)]).sum(0)
    u = torch.zeros(1, len(shape), *shape)
    u[:, 0] = amplitude * torch.exp(-r2 / (2 * 5.0**2))
    return u


def _inverse(u: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """The field v with v(y) = -u(y + v(y)) by fixed-point iteration."""
    v = -u
    for _ in range(iterations):
        v = -warp(u, v)
    return v


@pytest.mark.parametrize("shape", [(24, 24), (16, 16, 16)])
def test_criteria_recover_the_true_setting_of_a_synthetic_pair(shape):
    torch.manual_seed(0)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    moving = torch.stack([torch.sin(0.5 * g + i) for i, g in enumerate(grids)]).sum(0)[None, None]
    truth = _bump(shape, 2.0)
    fixed = warp(moving, truth)
    # stiff settings move part of the way; setting 3 is the truth; soft ones add a rough,
    # inconsistent part (the last one folds)
    fields = [c * truth for c in (0.0, 0.4, 0.7, 1.0)]
    noise = [a * torch.randn_like(truth) for a in (0.3, 1.5)]
    fields += [truth + n for n in noise]
    # the reversed pair stops short by a different fraction than the forward one, except at
    # the true setting
    backward = [_inverse(c**0.5 * truth) for c in (0.0, 0.4, 0.7, 1.0)]
    backward += [_inverse(truth) + a * torch.randn_like(truth) for a in (0.3, 1.5)]
    batch = torch.cat(fields)
    n = batch.shape[0]
    rows = label_free_measures(
        MSE(), fixed.expand(n, -1, *shape), moving.expand(n, -1, *shape), batch, torch.cat(backward)
    )
    from regzoo.metrics import folding_fraction

    for row, field in zip(rows, fields, strict=True):
        row["folding_fraction"] = folding_fraction(field[0])
    assert rows[-1]["folding_fraction"] > 0
    assert rows[3]["inverse_consistency"] < 0.05 * rows[3]["displacement_mean"]
    t = ChoiceTable(["k"], [{"k": float(i), **r} for i, r in enumerate(rows)])
    for name in ("invertible_fit", "discrepancy", "inverse_consistency"):
        assert pick(name, t) == 3, name


@pytest.mark.parametrize("ndim", [2, 3])
def test_roughness_and_consistency_of_analytic_fields(ndim):
    shape = (12,) * ndim
    a = torch.arange(ndim * ndim, dtype=torch.float32).reshape(ndim, ndim) * 0.01
    grids = torch.stack(torch.meshgrid(*[torch.arange(12.0)] * ndim, indexing="ij"))
    linear = torch.einsum("ij,j...->i...", a, grids)[None]  # u(x) = A x
    image = torch.rand(1, 1, *shape)
    (row,) = label_free_measures(MSE(), image, image, linear)
    assert row["roughness"] == pytest.approx(float((a**2).sum()), rel=1e-4)
    shift = torch.ones(1, ndim, *shape) * 0.5
    (row,) = label_free_measures(MSE(), image, image, shift, -shift)
    assert row["displacement_mean"] == pytest.approx(0.5 * ndim**0.5, rel=1e-5)
    assert row["inverse_consistency"] == pytest.approx(0.0, abs=1e-5)


# -- the sweep's choice, the folding limit and the report ---------------------------------------


def _result(max_folding: float | None) -> SweepResult:
    """Two pairs on a 3-setting grid: Dice is best at the softest setting, which folds."""
    rows = []
    for pair in ("a", "b"):
        for mu, dice, tre, folded, sim in (
            (0.1, 0.99, 8.0, 0.01, -0.9),
            (1.0, 0.97, 1.5, 0.0, -0.8),
            (10.0, 0.9, 3.0, 0.0, -0.5),
        ):
            rows.append(
                {
                    "mu": mu,
                    "fixed_id": pair,
                    "moving_id": pair + "m",
                    "dice": dice,
                    "tre_mm": tre,
                    "folding_fraction": folded,
                    "similarity": sim,
                    "similarity_initial": 0.0,
                    "roughness": 1.0 / mu,
                    "displacement_mean": 1.0,
                }
            )
    settings = [{k: v for k, v in rows[i].items() if not k.endswith("_id")} for i in range(3)]
    return SweepResult(["mu"], [[0.1, 1.0, 10.0]], rows, settings, ["log"], max_folding)


def test_folding_limit_and_every_criterion_in_the_report(tmp_path):
    result = _result(0.0)
    assert result.best("dice")["mu"] == 1.0
    assert result.choose("invertible_fit")["mu"] == 1.0
    assert [r["mu"] for r in result.choose_per_pair("invertible_fit")] == [1.0, 1.0]
    # the criterion judges the allowed settings among themselves: the folding one's larger
    # similarity gain does not set the discrepancy threshold
    assert result.choose("discrepancy")["mu"] == 1.0
    assert result.choose("lcurve")["mu"] in (1.0, 10.0)
    choices = result.choices()
    assert {"dice", "tre_mm", "invertible_fit", "discrepancy", "lcurve"} <= set(choices)
    assert "inverse_consistency" not in choices  # its measure was not taken
    summary = write_sweep_report(result, tmp_path / "r", metric="dice").read_text()
    assert "would choose **mu = 0.1**" in summary
    assert "removed it" in summary
    assert "| invertible_fit | mu = 1 |" in summary
    payload = json.loads((tmp_path / "r" / "sweep.json").read_text())
    assert payload["unconstrained_best"]["mu"] == 0.1
    summary = write_sweep_report(
        result, tmp_path / "c", metric="dice", criterion="discrepancy"
    ).read_text()
    assert "label-free `discrepancy`" in summary
    assert (
        "removed it"
        not in write_sweep_report(_result(None), tmp_path / "n", metric="dice").read_text()
    )


def test_choice_errors_are_one_clear_message():
    result = _result(0.0)
    with pytest.raises(UnknownNameError, match="lcurve"):
        result.choose("lcurv")
    with pytest.raises(InputError, match=r"needs the measures \['inverse_consistency'"):
        result.choose("inverse_consistency")
    with pytest.raises(InputError, match="tolerance must be in"):
        criteria.Discrepancy(tolerance=1.5)
    with pytest.raises(InputError, match="table of settings is empty"):
        criteria.get("lcurve")()(ChoiceTable(["mu"], []))
    every_fold = _result(0.0)
    for s in every_fold.settings:
        s["folding_fraction"] = 0.5
    with pytest.raises(InputError, match="--max-folding"):
        every_fold.choose("discrepancy")
    with pytest.raises(TypeError, match="must subclass"):
        criteria.CRITERIA.add("not_a_criterion", int)  # type: ignore[arg-type]  # deliberately


# -- end to end: register --choose on a pair without masks or landmarks ------------------------


@pytest.fixture(scope="module")
def bare_pair(tiny_phantom, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny phantom's first pair, copied alone: no masks, labels or keypoints beside it."""
    folder = tmp_path_factory.mktemp("bare")
    images = sorted((tiny_phantom / "imagesTr").glob("*_0001_*.nii.gz"))
    copies = [folder / f"img{i}.nii.gz" for i in range(2)]
    for src, dst in zip(images, copies, strict=True):
        shutil.copy(src, dst)
    return copies[0], copies[1]


@pytest.mark.parametrize("name", criteria.available())
def test_register_choose_end_to_end(name, tiny_checkpoint, bare_pair, tmp_path, capsys):
    fixed, moving = bare_pair
    out = tmp_path / "out"
    args = ["register", "--model", str(tiny_checkpoint), "--fixed", str(fixed)]
    args += ["--moving", str(moving), "--out", str(out), "--choose", name]
    args += ["--grid", "lam=0.1,10", "--grid", "mu=0.1:10:3", "--max-folding", "1"]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((out / "choice.json").read_text())
    assert record["criterion"] == name
    assert record["params"]["linear_elastic.lam"] in (0.1, 10.0)
    assert record["params"]["linear_elastic.mu"] in record["grid"]["linear_elastic.mu"]
    assert len(record["settings"]) == 6
    assert (out / "disp.nii.gz").is_file()
    assert f"{name} chose" in capsys.readouterr().out


def test_register_choose_errors(tiny_checkpoint, bare_pair, tmp_path, capsys):
    fixed, moving = bare_pair
    base = ["register", "--model", str(tiny_checkpoint), "--fixed", str(fixed)]
    base += ["--moving", str(moving), "--out", str(tmp_path / "o")]
    assert main([*base, "--choose", "lcurve"]) == 2
    assert "go together" in capsys.readouterr().err
    assert main([*base, "--choose", "lcurv", "--grid", "mu=1,2"]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert main([*base, "--choose", "lcurve", "--grid", "mu=1,2", "--param", "lam=1"]) == 2
    assert "--choose picks the parameters" in capsys.readouterr().err
    assert main([*base, "--refine-grid"]) == 2
    assert "--refine-grid needs --choose" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--choose", "lcurve", "--grid", "mu=1,2", "--max-folding", "2"])
    assert "fraction in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sweep_criterion_and_metric_exclude_each_other(tiny_checkpoint, tiny_phantom, tmp_path):
    args = ["sweep", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom)]
    args += ["--grid", "mu=0.1,10", "--out", str(tmp_path / "s")]
    assert main([*args, "--metric", "dice", "--criterion", "lcurve"]) == 2
    assert main([*args, "--criterion", "discrepancy"]) == 0
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "label-free `discrepancy`" in summary
    assert "## What each criterion would choose" in summary


# -- a plugin regularizer works with every criterion ------------------------------------------


def test_plugin_regularizer_with_every_criterion(tiny_phantom, bare_pair, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names the plugin relative to the repository
    load_plugin(str(FILE_PLUGIN / "directional_diffusion.py"))
    overrides = tiny_overrides(tiny_phantom, tmp_path / "run")
    config = load_config(FILE_PLUGIN / "config.yaml", overrides)
    model = HyperRegistration(config).eval()
    fixed, moving = bare_pair
    grid = {"axial_weight": [0.01, 0.1, 1.0]}
    refused = {}
    for name in criteria.available():
        try:
            params, result = choose_parameters(
                model.model, fixed, moving, grid, name, max_folding=None
            )
        except InputError as error:  # the untrained fields hardly move: nothing admissible
            refused[name] = str(error)
            continue
        assert params["directional_diffusion.axial_weight"] in grid["axial_weight"], name
        assert len(result.rows) == 3
    assert set(refused) <= {"inverse_consistency"}, refused
    assert all("chooses nothing" in m and "min_displacement" in m for m in refused.values())


def test_the_docs_example_criterion_registers_and_chooses(clean_registries):
    text = (ROOT / "docs" / "choosing.md").read_text()
    block = re.search(r"## Writing a criterion.*?```python\n(.*?)```", text, re.S)
    assert block is not None, "docs/choosing.md lost its example"
    exec(compile(block.group(1), "choosing.md", "exec"), {})  # the page's own code
    # softest setting folds: the smoothest of the others is the stiffest
    assert _result(None).choose("smoothest_invertible")["mu"] == 10.0


def test_a_criterion_that_admits_no_setting_chooses_nothing():
    """Every setting folds: ``invertible_fit`` (which admits only non-folding fields) says so in
    one line and chooses nothing, for the data set, per pair and among the report's choices."""
    every_fold = _result(None)
    for entry in [*every_fold.settings, *every_fold.rows]:
        entry["folding_fraction"] = 0.01
    with pytest.raises(InputError) as caught:
        every_fold.choose("invertible_fit")
    message = str(caught.value)
    assert "\n" not in message
    assert "'invertible_fit' chooses nothing" in message
    assert "none of the 3 settings" in message and "does not fold" in message
    assert every_fold.choose_per_pair("invertible_fit") == []
    assert "invertible_fit" not in every_fold.choices()
    assert every_fold.choose("lcurve")["mu"] in (0.1, 1.0, 10.0)  # the others still choose
    # beyond max_folding: the same one line names the limit, and nothing per pair either
    limited = _result(0.001)
    for entry in [*limited.settings, *limited.rows]:
        entry["folding_fraction"] = 0.01
    with pytest.raises(InputError, match=r"'discrepancy' chooses nothing: .*--max-folding"):
        limited.choose("discrepancy")
    assert limited.choose_per_pair("discrepancy") == []

    # a criterion (plugin) that scores every setting inf
    class Nothing(criteria.Criterion):
        admits = "no setting at all"

        def score(self, table: ChoiceTable) -> np.ndarray:
            return np.full(len(table.settings), np.inf)

    with pytest.raises(InputError, match=r"'Nothing' chooses nothing.*admits no setting at all"):
        _result(None).choose(Nothing())
