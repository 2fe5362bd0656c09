"""``sweep`` with several refinement similarities: a similarity axis of the exact sweep, chosen
together with the parameters by a label-free criterion (issue 29, item 3)."""

from __future__ import annotations

import json

import pytest

from regzoo._errors import UnknownNameError
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.data.learn2reg import Intensity, Learn2RegDataset
from regzoo.refinement import RefineOptions
from regzoo.sweeping import parse_grid, sweep

SIMILARITIES = ["model", "model + ngf"]


def test_sweep_similarity_axis_end_to_end(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom)]
    args += ["--grid", "lam=0.1,10", "--grid", "mu=1", "--refine", "2", "--refine-grid"]
    args += ["--refine-similarity", *SIMILARITIES, "--criterion", "discrepancy"]
    args += ["--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    record = json.loads((out / "sweep.json").read_text())
    assert record["refine_similarities"] == SIMILARITIES
    settings = record["settings"]
    assert len(settings) == 4  # 2 similarities x 2 x 1 grid
    assert [s["refine_similarity"] for s in settings] == [SIMILARITIES[0]] * 2 + [
        SIMILARITIES[1]
    ] * 2
    assert {s["linear_elastic.lam"] for s in settings} == {0.1, 10.0}
    best = record["best"]
    assert best["refine_similarity"] in SIMILARITIES
    assert best in settings  # chosen among similarities and parameters together
    # what follows the choice refines under the chosen similarity
    assert record["refine"]["similarity"] == best["refine_similarity"]
    assert record["choices"]["discrepancy"] == best
    for i, spec in enumerate(["model", "model_ngf"]):  # one heat-map file per similarity
        assert (out / f"heatmap_{i}_{spec}.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "Refined under `model + ngf`" in summary
    assert f"refined under `{best['refine_similarity']}`" in summary
    assert f"refined under '{best['refine_similarity']}'" in printed
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("refine_similarity,") and len(rows) == 1 + 4  # one pair


def test_similarity_axis_api_and_parts(tiny_checkpoint, tiny_phantom):
    model = load_model(tiny_checkpoint)
    intensity = Intensity.from_config(model.config.data)
    data = Learn2RegDataset(tiny_phantom, "val", intensity=intensity, annotations=True)
    grid = parse_grid(["mu=0.3,3"])
    result = sweep(
        model,
        data,
        grid,
        refine=RefineOptions(steps=1),
        refine_similarities=SIMILARITIES,
        progress=False,
    )
    assert result.similarities == SIMILARITIES
    assert result.keys == ["linear_elastic.mu", "refine_similarity"]
    assert result.metric_grid("tre_mm").shape == (2, 2)
    part = result.part("model + ngf")
    assert part.similarities == [] and len(part.settings) == 2
    assert part.metric_grid("tre_mm").tolist() == result.metric_grid("tre_mm")[1].tolist()
    # the label-free measures share one yardstick (the model's similarity) across the axis
    assert result.settings[0]["similarity_initial"] == pytest.approx(
        result.settings[2]["similarity_initial"]
    )
    with pytest.raises(UnknownNameError, match="did you mean"):
        result.part("model + ngg")


def test_similarity_axis_errors(tiny_checkpoint, tiny_phantom, tmp_path, capsys):
    base = ["sweep", "--model", str(tiny_checkpoint), "--data", str(tiny_phantom)]
    base += ["--grid", "mu=1", "--out", str(tmp_path / "o")]
    assert main([*base, "--refine", "2", "--refine-similarity", *SIMILARITIES]) == 2
    assert "need an exact sweep" in capsys.readouterr().err
    twice = ["--refine", "2", "--refine-grid", "--refine-similarity", "model", "model"]
    assert main([*base, *twice]) == 2
    assert "given twice" in capsys.readouterr().err
    typo = ["--refine", "2", "--refine-grid", "--refine-similarity", "model", "ngff"]
    assert main([*base, *typo]) == 2
    assert "ngf" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    model = load_model(tiny_checkpoint)
    data = Learn2RegDataset(tiny_phantom, "val")
    with pytest.raises(ValueError, match=r"RefineOptions\(steps > 0\)"):
        sweep(model, data, parse_grid(["mu=1"]), refine_similarities=SIMILARITIES)


def test_from_flags_reads_the_sweeps_list_of_similarities():
    """``sweep``'s ``--refine-similarity`` takes one or more texts: one is the option, two or
    more the axis (each text checked, the options' similarity left to the axis)."""
    from regzoo.cli.refine_flags import from_flags

    assert from_flags(similarity=["model + ngf"], steps=2) == RefineOptions(
        steps=2, similarity="model + ngf"
    )
    assert from_flags(similarity=SIMILARITIES, steps=2) == RefineOptions(steps=2)
    with pytest.raises(UnknownNameError, match="did you mean 'ngf'"):
        from_flags(similarity=["model", "ngff"], steps=2)
