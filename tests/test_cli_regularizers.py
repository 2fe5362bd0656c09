import json

from regzoo.cli import main


def test_regularizers_json_lists_the_zoo(capsys):
    assert main(["regularizers", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    names = {e["name"] for e in entries}
    assert {
        "diffusion",
        "linear_elastic",
        "bending_energy",
        "curvature",
        "total_variation",
        "jacobian",
    } <= names
    elastic = next(e for e in entries if e["name"] == "linear_elastic")
    assert [p["name"] for p in elastic["params"]] == ["lam", "mu"]
    assert set(elastic["params"][0]) >= {"name", "low", "high", "default", "scale"}


def test_regularizers_text_and_bad_plugin(capsys, tmp_path):
    assert main(["regularizers"]) == 0
    out = capsys.readouterr().out
    assert "linear_elastic" in out and "shear modulus" in out
    assert main(["regularizers", "--plugin", str(tmp_path / "nope.py")]) == 2
    assert "failed to load" in capsys.readouterr().err
