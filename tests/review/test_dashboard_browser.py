"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from search.review.dashboard import DashboardServer
from search.review.run import load_run

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install -y chromium; .ci/run installs it)"),
]
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_dashboard_lists_study_and_shows_contact_sheet(standin_run, browser_page, test_artifacts):
    run = load_run(standin_run)
    with DashboardServer(run, host="127.0.0.1", port=0, refresh_s=3600) as server:
        page = browser_page
        page.goto(server.url, wait_until="domcontentloaded")
        page.get_by_text(run.study_name).first.wait_for(timeout=30_000)

        study_id = run.open_study()._study_id
        # the study page carries the figures `dashboard` saved into the study, drawn by plotly
        page.goto(f"{server.url}/studies/{study_id}", wait_until="domcontentloaded")
        heat_map = page.locator('[id="user-defined-plot:best-block-weights"] .main-svg').first
        heat_map.wait_for(timeout=30_000)
        heat_map.scroll_into_view_if_needed()
        page.screenshot(path=str(test_artifacts / "dashboard_study.png"))

        best = max((t for t in run.open_study().trials if t.value is not None), key=lambda t: t.value)
        page.goto(f"{server.url}/studies/{study_id}/trials?numbers={best.number}", wait_until="domcontentloaded")
        image = page.locator("img[src*='/artifacts/']").first
        image.wait_for(timeout=30_000)
        image.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                               timeout=30_000)
        width = image.evaluate("img => img.naturalWidth")
        # the note with the per-category table is rendered on the trial page too
        page.get_by_text(f"Trial {best.number}: tag_recall").first.wait_for(timeout=10_000)
        shot = test_artifacts / "dashboard_trial.png"
        page.screenshot(path=str(shot))  # the viewport: long user attrs make the full page very wide
        page.get_by_text(f"Trial {best.number}: tag_recall").first.evaluate(
            "el => { el.scrollIntoView({block: 'center'});"
            " document.querySelectorAll('*').forEach(e => { if (e.scrollLeft) e.scrollLeft = 0; }); }")
        page.screenshot(path=str(test_artifacts / "dashboard_trial_note.png"))

        # Smart Selection shows the artifacts of the trials picked in the parallel-coordinate plot
        page.goto(f"{server.url}/studies/{study_id}/smartSelection", wait_until="domcontentloaded")
        page.get_by_text("Show Artifacts").click()
        sheets = page.locator("img[src*='/artifacts/']")
        sheets.first.wait_for(timeout=30_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll(\"img[src*='/artifacts/']\")].some(i => i.naturalWidth > 0)",
            timeout=30_000)
        n_sheets = sheets.count()
        sheets.first.scroll_into_view_if_needed()
        page.screenshot(path=str(test_artifacts / "dashboard_smart_selection.png"))
    assert width == 4 * 66 + 2  # the uploaded contact sheet, decoded by the browser
    assert shot.stat().st_size > 10_000
    assert n_sheets >= 2
    os.environ.get("CI") or print(f"screenshot: {shot}")
