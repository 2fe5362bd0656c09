"""The quick-start notebook (notebooks/quickstart.ipynb) runs, cell by cell, in the suite.

A small runner, not a Jupyter kernel: the notebook's code cells run in order in one namespace
in a folder holding the files it names (``last.ckpt``, ``fixed.nii.gz``, ``moving.nii.gz``),
so the suite needs neither ipykernel nor nbclient. The notebook is stored without outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def code_cells(path: Path) -> list[str]:
    """The source of each code cell, in order."""
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_the_notebook_is_stored_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)


@pytest.fixture
def folder(tmp_path, monkeypatch, tiny_phantom, tiny_checkpoint):
    images = tiny_phantom / "imagesTr"
    shutil.copy(images / "PhantomCT_0003_0000.nii.gz", tmp_path / "fixed.nii.gz")
    shutil.copy(images / "PhantomCT_0003_0001.nii.gz", tmp_path / "moving.nii.gz")
    shutil.copy(tiny_checkpoint, tmp_path / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_code_cell_runs(folder, clean_registries):
    namespace: dict[str, object] = {"__name__": "__main__"}
    for index, source in enumerate(code_cells(NOTEBOOK)):
        try:
            exec(compile(source, f"{NOTEBOOK.name}[cell {index}]", "exec"), namespace)
        except Exception as exc:  # name the cell that failed
            raise AssertionError(f"cell {index} of {NOTEBOOK.name} failed: {exc!r}") from exc
    written = sorted(p.name for p in (folder / "out" / "quickstart").iterdir())
    assert "displacement_itk.nii.gz" in written
