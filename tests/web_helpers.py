"""Helpers for the web view and metrics tests: a paced live camera whose frames all differ, a
stream running on a thread, and plain HTTP calls (urllib: the real server, no test client)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

import cv2
import pytest

from tests.runtime_fakes import FakeCapture, make_frame

pytest.importorskip("starlette", reason="the factory extra (pip install -e '.[factory]') is not installed")
pytest.importorskip("uvicorn", reason="the factory extra (pip install -e '.[factory]') is not installed")
pytest.importorskip("prometheus_client", reason="the factory extra (pip install -e '.[factory]') is not installed")

from adtr_edge.runtime.pipeline import run_stream  # noqa: E402


class CountingCapture(FakeCapture):
    """A camera at 1/period FPS whose frames carry their number (so consecutive overlays differ)
    and a bright defect every ``defect_every`` frames."""

    def read(self):
        ok, image = super().read()
        if ok:
            image = make_frame(bool(self.defect_every) and self.count % self.defect_every == 0)
            cv2.putText(image, str(self.count), (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 200, 200), 1)
        return ok, image


@contextlib.contextmanager
def live_stream(model, frontend, period: float = 0.05, defect_every: int = 12, **kw):
    """``run_stream`` of a paced camera into ``frontend`` on a thread; stops it on exit. Yields a
    dict that gets "summary" once the stream ended."""
    out: dict = {}
    opener = lambda target, api: CountingCapture(None, period=period, defect_every=defect_every)

    def run():
        try:
            out["summary"] = run_stream(model, "rtsp://line-1/cam", backend="onnxruntime", opener=opener,
                                        extra_sinks=[frontend], print_summary=False, handle_signals=False, **kw)
        except BaseException as e:  # surfaced by the test body
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for(lambda: frontend.pipeline is not None and frontend.pipeline.processed > 0 or "error" in out, 20)
        if "error" in out:
            raise out["error"]
        yield out
    finally:
        if frontend.pipeline is not None:
            frontend.pipeline.stop("test done")
        t.join(timeout=20)
    if "error" in out:
        raise out["error"]


def wait_for(cond, timeout: float, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http(method: str, url: str, body: Optional[dict] = None, headers: Optional[dict] = None,
         content_type: str = "application/json", timeout: float = 10.0):
    """(status, headers, bytes) of one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    h = dict(headers or {})
    if data is not None:
        h["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
