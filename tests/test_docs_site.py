"""The documentation site builds strictly, and its pages show links, not Sphinx roles.

One ``mkdocs build --strict`` (about 15 s) serves every test here: a broken link, a missing
anchor or an unresolved cross-reference fails the build (``strict`` and ``validation`` in
mkdocs.yml), and the HTML is grepped for the Sphinx roles that mkdocstrings does not render.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLES = re.compile(r":(?:func|class|mod|meth|attr|data|exc):`")

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")


def _build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module."""
    folder = tmp_path_factory.mktemp("site")
    build = _build(folder)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return folder


def test_no_page_shows_a_sphinx_role(site):
    shown = {
        str(page.relative_to(site)): ROLES.findall(page.read_text())
        for page in site.rglob("*.html")
    }
    assert {page: roles for page, roles in shown.items() if roles} == {}


def test_no_docstring_uses_a_sphinx_role():
    sources = [*(ROOT / "regzoo").rglob("*.py"), *(ROOT / "docs").glob("*.md")]
    found = [str(p.relative_to(ROOT)) for p in sources if ROLES.search(p.read_text())]
    assert found == []


def test_cross_references_are_links(site):
    page = (site / "api" / "inference" / "index.html").read_text()
    # register's docstring points at refine: a link to the test-time tools page's anchor
    assert 'href="#regzoo.refinement.refine"' in page or "#regzoo.refinement.refine" in page


def test_the_package_page_lists_its_public_names(site):
    import regzoo

    page = (site / "api" / "regzoo" / "index.html").read_text()
    for name in regzoo.__all__:
        assert f"<code>{name}</code>" in page, name


def test_each_object_is_documented_once(site):
    """A re-exported name is documented at its defining module, not again at the package."""
    import importlib
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    anchors = {
        anchor
        for page in (site / "api").rglob("*.html")
        for anchor in re.findall(r'id="(regzoo[\w.]*)"', page.read_text())
    }
    packages = ["regzoo", "regzoo.io", "regzoo.similarity", "regzoo.testing", "regzoo.regularizers"]
    twice = [
        f"{package}.{name}"
        for package in packages
        for name in importlib.import_module(package).__all__
        if f"{package}.{name}" in anchors
        and hooks._defining_module(package, name) != package
        and importlib.util.find_spec(f"{package}.{name}") is None  # a module's own anchor
    ]
    assert twice == []


def test_a_broken_anchor_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [a](other.md#no-such-heading).\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    config = (ROOT / "mkdocs.yml").read_text()
    head = config.split("hooks:")[0]  # site name, strict and validation, no plugins or nav
    (tmp_path / "mkdocs.yml").write_text(head + f"docs_dir: {docs}\n")
    build = _build(tmp_path / "site", tmp_path / "mkdocs.yml")
    assert build.returncode != 0
    assert "no-such-heading" in build.stdout + build.stderr
