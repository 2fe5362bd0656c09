"""The explorer in a real browser: headless Chromium moves a slider and sees the page redraw,
then refines.

Runs Debian's ``chromium`` through playwright (browsers cannot be downloaded here), found on
``PATH`` or at ``$REGZOO_CHROMIUM``; skipped with the reason when either is missing. With
``REGZOO_EXPLORE_SCREENSHOT=PATH`` the screenshot is also written there (docs/img/explore.png
is made this way).
"""

import os
import shutil
from pathlib import Path

import pytest

from regzoo.checkpoint import load_model
from regzoo.explore.session import ExploreSession


def _chromium() -> str | None:
    candidates = [os.environ.get("REGZOO_CHROMIUM"), "chromium", "chromium-browser"]
    for name in filter(None, candidates):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
    )
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found: apt-get install chromium (or set REGZOO_CHROMIUM)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def explorer_url(tiny_checkpoint, tiny_phantom, tmp_path):
    pytest.importorskip("uvicorn", reason="the explorer's web parts need regzoo[explore]")
    from regzoo.explore.app import create_app
    from regzoo.explore.server import ExplorerServer

    images, masks = tiny_phantom / "imagesTr", tiny_phantom / "masksTr"
    session = ExploreSession(
        load_model(tiny_checkpoint),
        images / "PhantomCT_0003_0000.nii.gz",
        images / "PhantomCT_0003_0001.nii.gz",
        fixed_seg=masks / "PhantomCT_0003_0000.nii.gz",
        moving_seg=masks / "PhantomCT_0003_0001.nii.gz",
        out=tmp_path / "saved",
        params={"lam": 0.1, "mu": 0.1},
    )
    server = ExplorerServer(create_app(session), "127.0.0.1", 0)
    with server.running() as url:
        yield url


def test_moving_a_slider_redraws_the_registration(browser, explorer_url, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(explorer_url)
    page.wait_for_function("document.body.dataset.updates === '1'", timeout=60_000)
    before = page.text_content("#sdlogj")
    assert before and float(before) >= 0

    mu = page.locator('input.param[data-name="linear_elastic.mu"]')
    mu.fill("1000")  # the slider's top: mu = 100, stiff
    page.wait_for_function(
        "([before]) => document.getElementById('sdlogj').textContent !== before",
        arg=[before],
        timeout=60_000,
    )
    assert float(page.input_value('input.value[data-for="param-1"]')) == pytest.approx(100)
    assert page.text_content("#sdlogj") != before
    assert page.text_content("#source") == "network"
    # every canvas was drawn: a 32-voxel plane at the page's scale
    widths = page.eval_on_selector_all("canvas", "cs => cs.map(c => c.width)")
    assert len(widths) == 12 and min(widths) >= 32
    assert not errors, errors

    screenshot = tmp_path / "explore.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    target = os.environ.get("REGZOO_EXPLORE_SCREENSHOT")
    if target:
        shutil.copyfile(screenshot, Path(target))

    # refine at this setting: the progress bar fills, the readouts say the field is refined
    page.fill("#refine-steps", "6")
    page.click("#refine")
    page.wait_for_function(
        "document.getElementById('source').textContent === 'refined, 6 iterations'",
        timeout=120_000,
    )
    assert page.eval_on_selector("#refine-progress", "p => p.value") == 1
    assert page.is_enabled('input.param[data-name="linear_elastic.mu"]')
    assert not errors, errors
    page.close()
