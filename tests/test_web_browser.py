"""The web view in a real headless browser: Debian's chromium driven by playwright (the system
browser, no downloaded build). A paced live camera streams into the view while the test watches
the overlay change, the chart fill, moves the threshold slider and saves; a screenshot is kept.

``ADTR_WEB_SCREENSHOT=PATH`` also copies the screenshot there (scripts/web_view_screenshot.py
uses it for docs/img/web-view.png).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.runtime_fakes import write_fake_export
from tests.web_helpers import live_stream, wait_for

from adtr_edge.runtime.web.frontend import Frontend

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)")


def _frame_rows(page):
    """(frame, label, threshold) of the page's recent-frames table, newest first."""
    return page.eval_on_selector_all(
        "#frames tbody tr", "rows => rows.map(r => [Number(r.dataset.frame), r.dataset.label, Number(r.cells[3].textContent)])")


def test_page_shows_the_live_stream_and_the_slider_changes_labels(tmp_path):
    model = write_fake_export(tmp_path / "model")
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    shot = tmp_path / "web-view.png"
    with sync_api.sync_playwright() as p, live_stream(model, fe, period=0.06, defect_every=10):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(fe.http.url, wait_until="domcontentloaded")

            # The overlay: the MJPEG <img> decodes, and shows another frame a moment later.
            page.wait_for_function("document.getElementById('live').naturalWidth > 0", timeout=20000)
            first = page.locator("#live").screenshot()
            wait_for(lambda: page.locator("#live").screenshot() != first, 10, "the overlay image to change")

            # The chart has points, the health table the stream's facts.
            page.wait_for_function("Number(document.getElementById('chart').dataset.points || 0) >= 10", timeout=20000)
            health = page.inner_text("#health")
            assert "onnxruntime" in health and "reconnects" in health and "drops" in health
            assert "camera\t–" in health  # a model without the normals' ranges: its camera is not watched
            assert page.inner_text("#model").startswith("model (onnx")
            assert page.eval_on_selector("#source", "s => s.value") == "rtsp://line-1/cam"

            # Last alarms, with thumbnails that load.
            page.wait_for_function("[...document.querySelectorAll('#alarms img')].some(i => i.naturalWidth > 0)", timeout=20000)

            before = _frame_rows(page)
            assert any(label == "normal" for _, label, _ in before)  # dark frames score ~0.12 < 0.5
            # Move the slider to 0.05: every following frame (dark ones too) must come back anomalous.
            page.eval_on_selector("#threshold", "s => { s.value = 0.05; s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')); }")
            wait_for(lambda: fe.pipeline.detector.thresholds.threshold == 0.05, 10, "the detector's threshold")
            # Frames already scored (in the sink queue) keep the old threshold, and a live camera's
            # drops make frame numbers run ahead of the processed count: the switch is found in the
            # rows themselves, the first frame scored at 0.05, and every row from there on must be.
            page.wait_for_function("[...document.querySelectorAll('#frames tbody tr')].filter(r => Number(r.cells[3].textContent) === 0.05).length >= 8",
                                   timeout=20000)
            rows = _frame_rows(page)
            first_new = min(f for f, _, thr in rows if thr == pytest.approx(0.05))
            after = [r for r in rows if r[0] >= first_new]
            assert len(after) >= 8 and all(label == "anomalous" and thr == pytest.approx(0.05) for _, label, thr in after)
            assert page.inner_text("#threshold-value") == "0.0500"

            page.click("#save")
            page.wait_for_function("document.getElementById('save-msg').textContent.startsWith('saved')", timeout=10000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    fe.close()
    assert shot.stat().st_size > 10_000
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["meta"]["postprocess"]["thresholds"]["threshold"] == pytest.approx(0.05)
    assert manifest["threshold_history"][-1]["threshold"] == 0.5
    target = os.environ.get("ADTR_WEB_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
