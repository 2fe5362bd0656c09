"""``sweep`` with several refinement similarities: a similarity axis of the exact sweep, chosen
together with the parameters by a label-free criterion (issue 29, item 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from regzoo._errors import InputError, UnknownNameError
from regzoo.checkpoint import load_model
from regzoo.cli import main
from regzoo.criteria import consensus_fit, gain_key
from regzoo.data.learn2reg import Intensity, Learn2RegDataset
from regzoo.refinement import RefineOptions
from regzoo.report import write_sweep_report
from regzoo.sweeping import SweepResult, parse_grid, sweep

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
    assert best in settings
    # what follows the choice refines under the chosen similarity
    assert record["refine"]["similarity"] == best["refine_similarity"]
    assert record["choices"]["discrepancy"] == best
    for i, spec in enumerate(["model", "model_ngf"]):  # one heat-map file per similarity
        assert (out / f"heatmap_{i}_{spec}.png").is_file()
    # the criterion took the similarity by consensus first: the report says so, with the fits
    consensus = record["consensus_by_similarity"]
    assert set(consensus) == set(SIMILARITIES) and 0 < max(consensus.values()) <= 1.0
    assert best["refine_similarity"] == max(consensus, key=consensus.__getitem__)
    summary = (out / "summary.md").read_text()
    assert "choose the similarity first, by the consensus" in summary
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
    # every setting is also measured by each similarity of the axis, the same numbers in
    # its rows and (averaged) in its setting
    for entry in [*result.settings, *result.rows]:
        assert all(np.isfinite(entry[gain_key(spec)]) for spec in SIMILARITIES)
    row = next(r for r in result.rows if r["refine_similarity"] == "model")
    assert row[gain_key("model")] == pytest.approx(row["similarity_initial"] - row["similarity"])


def test_consensus_fit_is_the_mean_fraction_of_each_similaritys_best_gain():
    entries = [
        {gain_key("a"): 2.0, gain_key("b"): 1.0},
        {gain_key("a"): 1.0, gain_key("b"): 4.0},
        {gain_key("a"): 4.0, gain_key("b"): -1.0},
    ]
    fit = consensus_fit(entries, ["a", "b"])
    assert fit == pytest.approx([(0.5 + 0.25) / 2, (0.25 + 1) / 2, (1 - 0.25) / 2])
    # a similarity that no entry improves says nothing and is left out
    flat = [{**e, gain_key("c"): -1.0} for e in entries]
    assert consensus_fit(flat, ["a", "b", "c"]) == pytest.approx(fit)
    with pytest.raises(InputError, match="no setting improves any of the similarities"):
        consensus_fit(flat, ["c"])


def _axis_result(
    gains: dict[str, dict[str, float]],
    similarity: dict[str, float],
    pairs: tuple[str, ...] = ("1",),
    folding: float = 0.0,
) -> SweepResult:
    """Two settings (mu = 1, 3) under each of two similarities 'own' and 'both', per pair:
    ``similarity`` is the model's measure per similarity (softer fits better), ``gains`` the
    axis's gains; a pair id ending in '!' has the gains of 'own' and 'both' swapped. The
    settings are the first pair's rows; ``folding`` is the folded fraction of mu = 1."""
    rows = []
    for pair in pairs:
        swap = {"own": "both", "both": "own"} if pair.endswith("!") else {}
        for spec in ("own", "both"):
            for mu, roughness in ((1.0, 0.2), (3.0, 0.1)):
                rows.append(
                    {
                        "refine_similarity": spec,
                        "linear_elastic.mu": mu,
                        "fixed_id": pair,
                        "moving_id": pair,
                        "folding_fraction": folding if mu == 1.0 else 0.0,
                        "similarity": similarity[spec] - roughness / 10,
                        "similarity_initial": 0.0,
                        "roughness": roughness,
                        "tre_mm": 1.0 + roughness,
                        **{gain_key(k): v for k, v in gains[swap.get(spec, spec)].items()},
                    }
                )
    settings = [r for r in rows if r["fixed_id"] == pairs[0]]
    return SweepResult(
        ["linear_elastic.mu"], [[1.0, 3.0]], rows, settings, similarities=["own", "both"]
    )


# refinement under 'own' wins the model's own measure, but only 'both' improves both measures
AGREED = {"own": {"own": 1.0, "both": 0.2}, "both": {"own": 0.8, "both": 1.0}}
MODEL_MEASURE = {"own": -1.0, "both": -0.8}


def test_the_similarity_is_chosen_by_consensus_then_the_parameters_by_the_criterion():
    result = _axis_result(AGREED, MODEL_MEASURE, pairs=("1", "2!"))
    chosen = result.choose("invertible_fit")  # best model similarity within the similarity
    assert (chosen["refine_similarity"], chosen["linear_elastic.mu"]) == ("both", 1.0)
    assert result.consensus_by_similarity() == pytest.approx({"own": 0.6, "both": 0.9})
    # per pair, each pair's own consensus: the second pair's gains favour 'own'
    picks = result.choose_per_pair("invertible_fit")
    per_pair = {r["fixed_id"]: r["refine_similarity"] for r in picks}
    assert per_pair == {"1": "both", "2!": "own"}
    # a sweep recorded without the gains (before they were measured) chooses in one stage
    for entry in result.settings:
        for key in [k for k in entry if k.startswith("similarity_gain")]:
            del entry[key]
    assert result.consensus_by_similarity() == {}
    assert result.choose("invertible_fit")["refine_similarity"] == "own"


def test_the_consensus_skips_folding_settings_and_falls_back_to_the_next_similarity():
    # the folding limit applies before the consensus: with mu = 1 folding, 'both' still wins
    limited = _axis_result(AGREED, MODEL_MEASURE, folding=0.01)
    limited.max_folding = 0.0
    assert limited.choose("invertible_fit")["linear_elastic.mu"] == 3.0
    # without a limit invertible_fit admits no folding setting; when the consensus's similarity
    # has none it can admit, the next similarity's settings are judged
    gains = {"own": {"own": 0.2, "both": 0.2}, "both": {"own": 1.0, "both": 1.0}}
    result = _axis_result(gains, MODEL_MEASURE, folding=0.01)
    result.settings = [s for s in result.settings if s["linear_elastic.mu"] == 1.0]
    for s in result.settings:
        if s["refine_similarity"] == "own":
            s["folding_fraction"] = 0.0
    assert result.consensus_by_similarity() == pytest.approx({"own": 0.2, "both": 1.0})
    assert result.choose("invertible_fit")["refine_similarity"] == "own"


def test_the_report_says_how_the_similarity_was_chosen(tmp_path):
    result = _axis_result(AGREED, MODEL_MEASURE)
    summary = write_sweep_report(result, tmp_path / "a", metric="tre_mm").read_text()
    assert "**`both` 0.900**" in summary
    record = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert record["consensus_by_similarity"] == pytest.approx({"own": 0.6, "both": 0.9})
    for entry in result.settings:  # recorded before the gains were measured
        for key in [k for k in entry if k.startswith("similarity_gain")]:
            del entry[key]
    summary = write_sweep_report(result, tmp_path / "b", metric="tre_mm").read_text()
    assert "did not record each similarity's gain" in summary


def test_a_nan_gain_is_never_the_best():
    entries = [{gain_key("a"): float("nan")}, {gain_key("a"): 2.0}, {gain_key("a"): 1.0}]
    assert consensus_fit(entries, ["a"]).tolist() == [-np.inf, 1.0, 0.5]


def test_consensus_that_no_setting_improves_chooses_nothing_in_one_line():
    gains = {"own": {"own": -1.0, "both": -0.2}, "both": {"own": -0.8, "both": -1.0}}
    result = _axis_result(gains, MODEL_MEASURE)
    with pytest.raises(InputError, match="chooses nothing: no setting improves any") as info:
        result.choose("discrepancy")
    assert "\n" not in str(info.value)
    assert result.choose_per_pair("discrepancy") == []  # the pair is left out


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
