"""Reviews in the live view: over real HTTP (the JSON API, the token, bad input as one line) and
in a real browser (Debian's chromium through playwright) that marks an alarm as a defect with a
painted mask and a frame as not a defect, reloads, and undoes; the files land in the review folder.

``ADTR_REVIEW_SCREENSHOT=PATH`` also copies the browser test's screenshots there (the page with
both reviews; ``PATH`` with ``-paint`` before ``.png``: the paint dialog).
"""

from __future__ import annotations

import base64
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from tests.runtime_fakes import write_fake_export
from tests.web_helpers import http, live_stream, wait_for

from adtr_edge.runtime.review import ReviewFolder
from adtr_edge.runtime.web.frontend import Frontend

TOKEN = "rev-s3cret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _png_data_url(mask: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", mask)
    assert ok
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _post(base, path, body, headers=BEARER, **kw):
    code, _, raw = http("POST", base + path, body, headers=headers, **kw)
    return code, json.loads(raw)


def test_review_api_writes_the_raw_frame_and_refuses_bad_input(tmp_path):
    model = write_fake_export(tmp_path / "model")
    root = tmp_path / "reviews"
    fe = Frontend(model, http="127.0.0.1:0", token=TOKEN, review_dir=root, announce=False)
    base = fe.http.url
    src = "rtsp://line-1/cam"
    with live_stream(model, fe, period=0.02, defect_every=10):
        wait_for(lambda: fe.pipeline.processed > 40, 30, "40 frames")
        alarm = wait_for(lambda: next(iter(json.loads(http("GET", base + "api/alarms", headers=BEARER)[2])["alarms"]), None),
                         20, "an alarm")
        assert alarm["reviewable"] and alarm["review"] is None
        frame = alarm["frame"]

        # The frame as captured (no overlay), for painting on.
        code, headers, jpeg = http("GET", base + f"api/frames/{frame}.jpg?source={src}", headers=BEARER)
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert code == 200 and image.shape == (96, 128, 3)
        assert abs(int(image[48, 64, 0]) - 255) < 8 and abs(int(image[2, 2, 0]) - 30) < 8  # raw pixels, no heat map

        # Token and content type, as for the threshold.
        body = {"source": src, "frame": frame, "verdict": "defect"}
        assert _post(base, "api/review", body, headers={})[0] == 401
        assert _post(base, f"api/review?token={TOKEN}", body, headers={})[0] == 401  # a link cannot review
        code, err = _post(base, "api/review", body, content_type="text/plain")
        assert code == 400 and "application/json" in err["error"]

        # Bad input: one line each, nothing written.
        wrong = _png_data_url(np.full((10, 10), 255, np.uint8))
        for bad, status, message in (
            ({**body, "mask": wrong}, 400, "mask is 10x10, the frame is 128x96: paint on the frame at its own size"),
            ({**body, "mask": "data:image/png;base64,!!"}, 400, "mask: not base64"),
            ({**body, "verdict": "maybe"}, 400, "verdict 'maybe': choose one of defect, normal"),
            ({**body, "label": "../etc"}, 400, "label '../etc'"),
            ({"source": src, "verdict": "defect"}, 400, 'expected {"source": NAME, "frame": INDEX'),
            ({**body, "frame": 0}, 404, f"frame 0 of {src!r} has left the view's buffer"),
        ):
            code, err = _post(base, "api/review", bad)
            assert code == status and message in err["error"], (bad, err)
        assert ReviewFolder(root).records() == []

        mask = np.zeros((96, 128), np.uint8)
        mask[30:60, 40:90] = 255
        code, d = _post(base, "api/review", {**body, "label": "blob", "mask": _png_data_url(mask)})
        assert code == 200, d
        rec = d["review"]
        assert rec["image"].startswith("test/blob/") and rec["frame"] == frame and rec["source"] == src
        assert rec["model"]["digest"] and rec["reviewer"] == {"by": "adtr-edge stream web view", "client": "127.0.0.1"}
        assert rec["score"] > 0.5 and rec["threshold"] == 0.5
        assert np.array_equal(cv2.imread(str(root / rec["mask"]), cv2.IMREAD_GRAYSCALE), mask)
        code, err = _post(base, "api/review", body)
        assert code == 400 and "already reviewed; undo that review first" in err["error"]
        listed = json.loads(http("GET", base + "api/alarms", headers=BEARER)[2])["alarms"]
        assert next(a for a in listed if a["id"] == alarm["id"])["review"]["id"] == rec["id"]

        normal = wait_for(lambda: next((p for p in json.loads(http("GET", base + "api/scores", headers=BEARER)[2])["points"][-5:]
                                        if not p["label"]), None), 10, "a recent normal frame")
        code, d = _post(base, "api/review", {"source": src, "frame": normal["frame"], "verdict": "normal"})
        assert code == 200 and d["review"]["image"].startswith("train/good/")
        reviews = json.loads(http("GET", base + "api/reviews", headers=BEARER)[2])
        assert [r["verdict"] for r in reviews["reviews"]] == ["normal", "defect"] and reviews["review_dir"] == str(root)

        code, d = _post(base, "api/review/undo", {"id": rec["id"]})
        assert code == 200 and d["undone"]["id"] == rec["id"]
        assert not (root / rec["image"]).exists() and not (root / rec["mask"]).exists()
        code, err = _post(base, "api/review/undo", {"id": rec["id"]})
        assert code == 400 and "already undone" in err["error"]
        assert [r["verdict"] for r in json.loads(http("GET", base + "api/reviews", headers=BEARER)[2])["reviews"]] == ["normal"]
    fe.close()
    assert [r["verdict"] for r in ReviewFolder(root).records()] == ["normal"]


def test_review_without_a_review_folder_says_how_to_get_one(tmp_path):
    model = write_fake_export(tmp_path / "model")
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    with live_stream(model, fe):
        code, err = _post(fe.http.url, "api/review", {"source": "rtsp://line-1/cam", "frame": 1, "verdict": "normal"}, headers={})
        assert json.loads(http("GET", fe.http.url + "api/status")[2])["view"]["review_dir"] is None
    fe.close()
    assert code == 400 and err["error"] == "reviews need a review folder: start the stream with --review-dir DIR"


CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)")
def test_browser_reviews_a_painted_defect_and_a_false_alarm(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    model = write_fake_export(tmp_path / "model")
    root = tmp_path / "reviews"
    fe = Frontend(model, http="127.0.0.1:0", token=TOKEN, review_dir=root, announce=False)
    shot, paint_shot = tmp_path / "review-ui.png", tmp_path / "review-ui-paint.png"
    with sync_api.sync_playwright() as p, live_stream(model, fe, period=0.06, defect_every=10):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(fe.http.url + f"?token={TOKEN}", wait_until="domcontentloaded")

            # A defect, painted: the alarm card's "paint…", a stroke across the bright square, save.
            page.fill("#review-label", "blob")
            card = page.locator("#alarms .alarm", has=page.locator("button[data-act=paint]")).first
            card.wait_for(timeout=20000)
            alarm_frame = int(card.get_attribute("data-frame"))
            card.locator("button[data-act=paint]").click()
            page.wait_for_function("document.getElementById('paint').dataset.ready === '1'", timeout=10000)
            page.eval_on_selector("#brush", "b => { b.value = 70; }")  # screen pixels: ~9 frame pixels here
            box = page.locator("#paint-canvas").bounding_box()
            assert box["width"] > 500  # a 128x96 frame is shown scaled up to paint on
            y = box["y"] + box["height"] * 0.5
            page.mouse.move(box["x"] + box["width"] * 0.35, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.65, y, steps=12)
            page.mouse.up()
            page.screenshot(path=str(paint_shot))
            page.click("#paint-save")
            page.wait_for_function(f"[...document.querySelectorAll('#alarms .alarm[data-frame=\"{alarm_frame}\"] .reviewed')]"
                                   ".some(e => e.textContent === 'defect (painted)')", timeout=10000)

            # A false alarm: "not a defect" on a normal row of the recent frames (the list holds still under the pointer).
            row = page.locator("#frames tbody tr[data-label=normal]", has=page.locator("button[data-act=normal]")).first
            row.hover()
            normal_frame = int(row.get_attribute("data-frame"))
            row.locator("button[data-act=normal]").click()
            page.wait_for_function(f"[...document.querySelectorAll('#frames tr[data-frame=\"{normal_frame}\"] .reviewed')]"
                                   ".some(e => e.textContent === 'not a defect')", timeout=10000)
            assert page.inner_text("#review-msg").startswith("saved train/good/")
            page.evaluate(f"document.querySelector('#alarms .alarm[data-frame=\"{alarm_frame}\"]').scrollIntoView()")
            page.screenshot(path=str(shot), full_page=True)
            page.mouse.move(5, 5)

            # Both are in the folder, as a dataset.
            records = {r["verdict"]: r for r in ReviewFolder(root).records()}
            assert sorted(records) == ["defect", "normal"]
            defect, normal = records["defect"], records["normal"]
            assert defect["frame"] == alarm_frame and defect["image"].startswith("test/blob/") and normal["frame"] == normal_frame
            mask = cv2.imread(str(root / defect["mask"]), cv2.IMREAD_GRAYSCALE)
            assert mask.shape == (96, 128) and mask[48, 64] == 255  # the stroke's middle
            assert mask[:20].max() == 0 and mask[:, :30].max() == 0  # not where nobody painted
            assert 0.01 < (mask > 0).mean() < 0.1
            assert np.array_equal(cv2.imread(str(root / normal["image"])).shape, (96, 128, 3))

            # A reload keeps them.
            page.reload(wait_until="domcontentloaded")
            page.wait_for_function(f"[...document.querySelectorAll('#alarms .alarm[data-frame=\"{alarm_frame}\"] .reviewed')]"
                                   ".some(e => e.textContent === 'defect (painted)')", timeout=20000)

            # Undo the defect: its files go, the card offers the choices again.
            page.locator(f"#alarms .alarm[data-frame=\"{alarm_frame}\"] button[data-act=undo]").click()
            page.wait_for_function(f"!!document.querySelector('#alarms .alarm[data-frame=\"{alarm_frame}\"] button[data-act=defect]')",
                                   timeout=10000)
            assert not (root / defect["image"]).exists() and not (root / defect["mask"]).exists()
            assert [r["verdict"] for r in ReviewFolder(root).records()] == ["normal"]
        finally:
            browser.close()
    fe.close()
    assert shot.stat().st_size > 10_000 and paint_shot.stat().st_size > 10_000
    target = os.environ.get("ADTR_REVIEW_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
        shutil.copyfile(paint_shot, target.replace(".png", "-paint.png"))
