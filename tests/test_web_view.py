"""The web view's server over real HTTP (uvicorn on a localhost port): the JSON API, MJPEG, the
threshold changed on the running detector, the token, a port in use, a stalled client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse

import cv2
import pytest

from tests.runtime_fakes import make_frame, write_fake_export, write_video
from tests.web_helpers import http, live_stream, wait_for

from adtr_edge.cli import main as cli_main
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink
from adtr_edge.runtime.web import open_frontend
from adtr_edge.runtime.web.frontend import Frontend
from adtr_edge.runtime.web.server import parse_address


@pytest.fixture()
def model(tmp_path):
    return write_fake_export(tmp_path / "model")  # per test: some tests save a threshold into it


def _mjpeg_parts(url: str, n: int, timeout: float = 10.0) -> list:
    """The first ``n`` JPEG parts of a multipart/x-mixed-replace response, as (frame index, bytes)."""
    import urllib.request

    parts = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
        boundary = r.headers["Content-Type"].split("boundary=")[1].encode()
        while len(parts) < n:
            line = r.readline()
            if line.strip() != b"--" + boundary:
                continue
            head = {}
            while (line := r.readline().strip()):
                k, v = line.decode().split(":", 1)
                head[k.lower()] = v.strip()
            jpeg = r.read(int(head["content-length"]))
            parts.append((int(head["x-frame-index"]), jpeg))
    return parts


def test_api_mjpeg_and_threshold_on_the_running_detector(model):
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    base = fe.http.url
    with live_stream(model, fe):
        wait_for(lambda: len(json.loads(http("GET", base + "api/scores")[2])["points"]) >= 5, 20, "scores")
        code, _, body = http("GET", base + "api/status")
        status = json.loads(body)
        assert code == 200 and status["backend"] == "onnxruntime" and status["running"]
        assert list(status["sources"]) == ["rtsp://line-1/cam"] and status["model"]["name"] == "model"
        assert status["view"]["threshold_range"] == [0.0, 1.0]

        code, _, body = http("GET", base + "stream.mjpg?source=made-up")
        assert code == 404 and "no such source" in json.loads(body)["error"]  # a client cannot add sources
        assert "made-up" not in fe.state.labels()
        parts = _mjpeg_parts(base + "stream.mjpg?source=rtsp://line-1/cam", 3)
        indices = [i for i, _ in parts]
        assert indices == sorted(indices) and len(set(indices)) == 3  # a new frame per part
        image = cv2.imdecode(__import__("numpy").frombuffer(parts[-1][1], "uint8"), cv2.IMREAD_COLOR)
        assert image.shape == make_frame(False).shape

        dark = json.loads(http("GET", base + "api/scores")[2])["points"]
        assert any(not p["label"] for p in dark)
        code, _, body = http("POST", base + "api/threshold", {"threshold": 0.05})  # below every dark frame's score
        assert code == 200 and json.loads(body)["threshold"] == 0.05
        changed_at = json.loads(http("GET", base + "api/status")[2])["frames"]
        wait_for(lambda: len([p for p in json.loads(http("GET", base + "api/scores")[2])["points"] if p["frame"] > changed_at + 1]) >= 5,
                 20, "frames after the change")
        after = [p for p in json.loads(http("GET", base + "api/scores")[2])["points"] if p["frame"] > changed_at + 1]
        assert all(p["label"] and p["threshold"] == 0.05 for p in after)

        for bad, message in (({"threshold": "x"}, "must be a finite number"), ({}, "expected {\"threshold\""),
                             ({"threshold": True}, "must be a finite number")):
            code, _, body = http("POST", base + "api/threshold", bad)
            assert code == 400 and message in json.loads(body)["error"]
        code, _, body = http("POST", base + "api/threshold", {"threshold": 0.3}, content_type="text/plain")
        assert code == 400 and "application/json" in json.loads(body)["error"]  # no cross-site form can post

        wait_for(lambda: any(a["thumbnail"] for a in json.loads(http("GET", base + "api/alarms")[2])["alarms"]), 20, "an alarm thumbnail")
        alarm = next(a for a in json.loads(http("GET", base + "api/alarms")[2])["alarms"] if a["thumbnail"])
        code, headers, jpeg = http("GET", base + f"api/alarms/{alarm['id']}.jpg")
        assert code == 200 and headers["content-type"] == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    fe.close()
    assert http_refused(base)


def http_refused(base: str) -> bool:
    try:
        http("GET", base + "api/status", timeout=2)
    except OSError:
        return True
    return False


def test_threshold_saved_from_the_view_lands_in_the_manifest_with_history(model):
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    base = fe.http.url
    with live_stream(model, fe):
        assert http("POST", base + "api/threshold", {"threshold": 0.42})[0] == 200
        code, _, body = http("POST", base + "api/threshold/save", {})
        assert code == 200
        saved = json.loads(body)["saved"]
        assert saved["threshold"] == 0.5 and saved["new_threshold"] == 0.42
        view = json.loads(http("GET", base + "api/status")[2])["view"]
        assert view["folder_threshold"] == 0.42 and view["saved"]["new_threshold"] == 0.42  # what the folder holds now
    fe.close()
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["meta"]["postprocess"]["thresholds"]["threshold"] == 0.42
    assert [h["threshold"] for h in manifest["threshold_history"]] == [0.5]
    summary = run_stream(model, str(_folder(model.parent / "imgs", [False, True])), backend="onnxruntime", print_summary=False)
    assert summary["threshold"] == 0.42  # the next stream starts with the saved threshold


def _folder(path, defects):
    path.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(defects):
        cv2.imwrite(str(path / f"{i:03d}.png"), make_frame(d))
    return path


def test_token_guards_the_page_the_api_and_changes(model):
    fe = Frontend(model, http="127.0.0.1:0", token="s3cret", announce=False)
    base = fe.http.url
    bearer = {"Authorization": "Bearer s3cret"}
    with live_stream(model, fe):
        assert http("GET", base)[0] == 401
        assert http("GET", base + "?token=wrong")[0] == 401
        code, _, page = http("GET", base + "?token=s3cret")
        assert code == 200 and b"<canvas id=\"chart\"" in page
        assert http("GET", base + "api/status", headers=bearer)[0] == 200
        assert http("GET", base + "api/status", headers={"X-Adtr-Token": "s3cret"})[0] == 200
        assert http("GET", base + "metrics")[0] == 401 and http("GET", base + "metrics", headers=bearer)[0] == 200
        # A change needs the token in a header: the query string (which a link or a form can carry) is not enough.
        assert http("POST", base + "api/threshold?token=s3cret", {"threshold": 0.2})[0] == 401
        assert http("POST", base + "api/threshold/save", {})[0] == 401
        assert fe.pipeline.detector.thresholds.threshold == 0.5
        assert http("POST", base + "api/threshold", {"threshold": 0.2}, headers=bearer)[0] == 200
        assert fe.pipeline.detector.thresholds.threshold == 0.2
    fe.close()
    assert "threshold_history" not in json.loads((model / "manifest.json").read_text())


class _FirstJpegGate(Sink):
    """A sink after the frontend that, at the first frame, waits (up to 10 s) for its first JPEG."""

    def __init__(self, frontend):
        self.frontend, self.encoded_mid_stream = frontend, None  # None until the first frame

    def on_frame(self, result) -> None:
        if self.encoded_mid_stream is None:
            deadline = time.monotonic() + 10
            while self.frontend.encoder.encoded < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            self.encoded_mid_stream = self.frontend.encoder.encoded >= 1


def test_a_stalled_client_does_not_hold_the_stream(model, tmp_path):
    """A client that opens the MJPEG stream and never reads: the file still runs to its end."""
    images = _folder(tmp_path / "imgs", [i % 7 == 0 for i in range(150)])
    fe = Frontend(model, http="127.0.0.1:0", announce=False, max_fps=1000)
    stalled = socket.create_connection(("127.0.0.1", fe.http.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    label = urllib.parse.quote(str(images), safe="")
    stalled.sendall(f"GET /stream.mjpg?source={label} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        wait_for(lambda: str(images) in fe.state.labels(), 10, "the stalled client's request")
        # The encoder runs at nice 10 and stops when the stream closes its sinks, so on a fast CPU
        # all 150 frames can pass before it is first scheduled. The gate holds the sink thread at
        # the first frame until a JPEG exists, so the stalled client is really sent one mid-stream.
        gate = _FirstJpegGate(fe)
        summary = run_stream(model, str(images), backend="onnxruntime", extra_sinks=[fe, gate], print_summary=False, handle_signals=False)
        assert summary["frames"] == 150 and summary["errors"] == []
        assert gate.encoded_mid_stream, "no overlay was encoded for the stalled client while the stream ran"
    finally:
        stalled.close()
        fe.close()


def test_port_in_use_is_one_line(model, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(AdtrError, match=rf"--http 127.0.0.1:{port}: the port is in use"):
            Frontend(model, http=f"127.0.0.1:{port}", announce=False)
        assert cli_main(["stream", str(model), "--source", "x.mp4", "--http", f"127.0.0.1:{port}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"error: --http 127.0.0.1:{port}: the port is in use (another stream or server?); choose another port"
        assert cli_main(["stream", str(model), "--source", "x.mp4", "--metrics", str(port)]) == 2
        assert "--metrics 127.0.0.1:" in capsys.readouterr().err
    finally:
        taken.close()


@pytest.mark.parametrize("text, expected", [("8080", ("127.0.0.1", 8080)), (":9", ("127.0.0.1", 9)),
                                            ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:81", ("::1", 81))])
def test_addresses_default_to_localhost(text, expected):
    assert parse_address(text, "--http") == expected


@pytest.mark.parametrize("args, message", [
    (["--http", "localhost:http"], "--http 'localhost:http': expected HOST:PORT"),
    (["--http", "127.0.0.1:70000"], "expected HOST:PORT with a port 0-65535"),
    (["--http", "203.0.113.9:8080"], "--http 203.0.113.9:8080: cannot listen there"),
    (["--http-token", "t"], "--http-token applies to --http or --metrics"),
])
def test_cli_web_option_errors(model, capsys, args, message):
    assert cli_main(["stream", str(model), "--source", "x.mp4", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_stream_with_http_and_metrics(model, tmp_path, capsys):
    images = _folder(tmp_path / "imgs", [False, True, False])
    assert cli_main(["stream", str(model), "--source", str(images), "--backend", "onnxruntime",
                     "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]) == 0
    err = capsys.readouterr().err
    assert "web view: http://127.0.0.1:" in err and "metrics: http://127.0.0.1:" in err


def test_no_web_options_add_nothing_and_import_nothing(model):
    assert open_frontend(model) == []
    out = subprocess.run([sys.executable, "-c", "import adtr_edge.runtime.cli, adtr_edge.runtime.web, sys; "
                          "print(sorted(m for m in ('starlette', 'uvicorn', 'prometheus_client') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"  # the runtime core stays importable without the factory extra


def test_alarms_end_in_the_view_with_min_consecutive(model, tmp_path):
    """--min-consecutive 2: the start event fires at a run's second frame, the end event names the
    run's first; the view must match them, so every alarm ends (none stays active forever)."""
    video = write_video(tmp_path / "runs.mp4", [i % 10 in (3, 4, 5) for i in range(40)])  # 4 runs of 3
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    seen = {}

    class AskAtTheEnd(Sink):  # after the frontend: at the last frame, what the page would get
        def on_frame(self, r):
            if r.frame.index == 39:
                seen["alarms"] = json.loads(http("GET", fe.http.url + "api/alarms")[2])["alarms"]

    try:
        summary = run_stream(model, str(video), backend="onnxruntime", min_consecutive=2, events=tmp_path / "e.jsonl",
                             extra_sinks=[fe, AskAtTheEnd()], print_summary=False, handle_signals=False)
    finally:
        fe.close()
    alarms = seen["alarms"]
    assert summary["alarms"] == 4
    assert [(a["start_frame"], a["end_frame"], a["active"]) for a in reversed(alarms)] == \
        [(s, s + 3, False) for s in (3, 13, 23, 33)]
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    starts = [(e["frame"], e["start_frame"]) for e in events if e["event"] == "alarm_start"]
    ends = [e["start_frame"] for e in events if e["event"] == "alarm_end"]
    assert starts == [(s + 1, s) for s in (3, 13, 23, 33)] and ends == [3, 13, 23, 33]  # a receiver can pair them


def test_threshold_slider_covers_the_defect_scores(tmp_path):
    """A calibration whose normal scores span 0-0.2 while defects score ~1: the slider's range
    must reach the defects, or it cannot raise the threshold past a false alarm."""
    from adtr_edge.postprocessing import Thresholds

    model = write_fake_export(tmp_path / "model", thresholds=Thresholds(0.15, 0.0, 0.2))
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    with live_stream(model, fe, defect_every=3):
        wait_for(lambda: any(p["score"] > 0.9 for p in json.loads(http("GET", fe.http.url + "api/scores")[2])["points"]),
                 20, "a defect's score")
        lo, hi = json.loads(http("GET", fe.http.url + "api/status")[2])["view"]["threshold_range"]
        top = max(p["score"] for p in json.loads(http("GET", fe.http.url + "api/scores")[2])["points"])
    fe.close()
    assert lo == 0.0 and hi >= top > 0.9


def test_first_frame_jpg_is_an_image(model):
    """The encoder draws only once someone watches: the very first /frame.jpg waits for that JPEG
    instead of answering an empty 204."""
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    try:
        with live_stream(model, fe):
            code, headers, body = http("GET", fe.http.url + "frame.jpg")
    finally:
        fe.close()
    assert code == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert int(headers["x-frame-index"]) >= 0


def test_frame_jpg_before_any_frame_is_a_clear_503(model):
    fe = Frontend(model, http="127.0.0.1:0", announce=False)
    try:
        code, headers, body = http("GET", fe.http.url + "frame.jpg?source=cam")
    finally:
        fe.close()
    assert code == 503 and headers["retry-after"] == "1" and "no frame yet" in json.loads(body)["error"]
