"""Every Python code block of README.md and docs/*.md runs in the suite.

A page's blocks run in order in one namespace, in a folder that holds the files they name
(``fixed.nii.gz``, ``moving.nii.gz``, ``last.ckpt`` and ``runs/quickstart/checkpoints/
last.ckpt``: a tiny phantom pair and a model trained for two steps). Code included from the
repository (``--8<-- "path[:section]"``, pymdownx.snippets) is expanded as the docs build does.
A block that cannot run here is preceded by ``<!-- docs-test: skip (REASON) -->``; the reason
is required. Registrations made by a page's code are forgotten afterwards.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```$", re.S | re.M)
SKIP = re.compile(r"<!-- docs-test: skip(?: \((?P<reason>[^)]*)\))? -->\s*\Z")
SNIPPET = re.compile(r'^-{1,}8<-{1,} "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$', re.M)
MARKER = re.compile(r"^\s*# -{1,}8<-{1,} \[(?:start|end):[\w-]+\]\s*$")


def _include(match: re.Match[str]) -> str:
    path = ROOT / match["path"]
    lines = path.read_text().splitlines()
    section = match["section"]
    if section:
        start = lines.index(f"# --8<-- [start:{section}]")
        end = lines.index(f"# --8<-- [end:{section}]")
        lines = lines[start + 1 : end]
    return "\n".join(line for line in lines if not MARKER.match(line))


def python_blocks(page: Path) -> list[tuple[str, str | None]]:
    """The page's Python blocks, snippets expanded: ``(code, skip reason or None)`` (an empty
    reason for a skip marker that gives none)."""
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        skip = SKIP.search(text[: match.start()])
        reason = None if skip is None else (skip["reason"] or "").strip()
        blocks.append((SNIPPET.sub(_include, match["code"]), reason))
    return blocks


RUNNABLE = [page for page in PAGES if any(r is None for _, r in python_blocks(page))]


def test_the_pages_with_python_code_are_found():
    names = {page.name for page in RUNNABLE}
    assert {"README.md", "quickstart.md", "plugins.md", "explore.md"} <= names


def test_every_skipped_block_gives_its_reason():
    skipped = {
        page.name: reason
        for page in PAGES
        for _, reason in python_blocks(page)
        if reason is not None
    }
    assert skipped == {"interop.md": "needs SimpleITK, which regzoo does not install"}


@pytest.fixture
def docs_folder(tmp_path, monkeypatch, tiny_phantom, tiny_checkpoint):
    """A working folder with the files the pages' code names."""
    images = tiny_phantom / "imagesTr"
    shutil.copy(images / "PhantomCT_0003_0000.nii.gz", tmp_path / "fixed.nii.gz")
    shutil.copy(images / "PhantomCT_0003_0001.nii.gz", tmp_path / "moving.nii.gz")
    shutil.copy(tiny_checkpoint, tmp_path / "last.ckpt")
    run = tmp_path / "runs" / "quickstart" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_every_python_block_runs(page, docs_folder, clean_registries):
    blocks = python_blocks(page)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for index, (code, reason) in enumerate(blocks):
        if reason is not None:
            continue
        exec(compile(code, f"{page.name} (python block {index + 1})", "exec"), namespace)
        ran += 1
    assert ran


def test_readme_api_example_computes_per_sample_energies(clean_registries):
    ((code, _),) = python_blocks(ROOT / "README.md")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["energy"].shape == (2,)
    assert "my_energy" in namespace["regzoo"].regularizers.available()


def test_page_code_registrations_are_forgotten():
    from regzoo import regularizers

    assert "my_energy" not in regularizers.available()
