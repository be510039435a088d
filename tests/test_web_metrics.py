"""Prometheus metrics scraped over HTTP and parsed back with prometheus_client's own parser: the
counters equal the run's summary (a folder with corrupt files; a live source that is lost,
reconnects and drops frames), the histograms count every frame, the backlog hook is read."""

from __future__ import annotations

import cv2
import pytest

from tests.runtime_fakes import FakeCapture, ScriptedOpener, make_frame
from tests.web_helpers import http

from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink
from adtr_edge.runtime.sources import ReconnectPolicy
from adtr_edge.runtime.web.app import make_app
from adtr_edge.runtime.web.frontend import Frontend
from adtr_edge.runtime.web.server import HttpServer

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402  (after the skip in web_helpers)


class Spool(Sink):
    """A delivering sink as the metrics see it: ``backlog()`` is the hook."""

    name = "mqtt"

    def __init__(self):
        self.waiting = 0

    def on_alarm(self, event):
        self.waiting += 1

    def backlog(self):
        return self.waiting


def _scrape(url: str) -> dict:
    code, headers, body = http("GET", url)
    assert code == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _folder(path):
    path.mkdir()
    for i, kind in enumerate(["ok", "defect", "defect", "ok", "bad", "ok", "defect", "ok", "bad", "ok"]):
        p = path / f"{i:03d}.png"
        if kind == "bad":
            p.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(p), make_frame(kind == "defect"))
    return str(path)


def _folder_source(tmp_path):
    return dict(source=_folder(tmp_path / "imgs"))


def _lost_camera(tmp_path):
    # 40 fast frames, lost, back for 40 more, then gone for good: drops, one reconnect, "source lost".
    opener = ScriptedOpener([FakeCapture(40, period=0.0005, defect_every=3), FakeCapture(40, period=0.0005, defect_every=3)])
    return dict(source="rtsp://line-2/cam", opener=opener, reconnect=ReconnectPolicy(initial_delay=0.01, max_attempts=2, read_failures=1))


@pytest.mark.parametrize("make_source", [_folder_source, _lost_camera], ids=["folder-with-corrupt-files", "lost-camera"])
def test_counters_match_the_summary(export_dir, tmp_path, make_source):
    fe = Frontend(export_dir, announce=False)  # metrics only; served below by a server the test owns
    spool = Spool()
    server = HttpServer(make_app(fe, page=False), "127.0.0.1:0", "--metrics")
    try:
        kw = make_source(tmp_path)
        summary = run_stream(export_dir, kw.pop("source"), backend="onnxruntime", extra_sinks=[fe, spool],
                             print_summary=False, handle_signals=False, **kw)
        m = _scrape(server.url + "metrics")
    finally:
        server.close()
    src = (("source", summary["source"]),)
    assert summary["frames"] > 0
    assert m[("adtr_frames_total", src)] == summary["frames"]
    assert m[("adtr_anomalous_frames_total", src)] == summary["anomalous"] > 0
    assert m[("adtr_alarms_total", src)] == summary["alarms"] > 0
    assert m[("adtr_dropped_frames_total", src)] == summary["drops"]
    assert m[("adtr_reconnects_total", src)] == summary["reconnects"]
    assert m[("adtr_corrupt_inputs_total", src)] == summary["corrupt"]
    for stage, stats in summary["stages_ms"].items():
        assert m[("adtr_stage_latency_seconds_count", src + (("stage", stage),))] == stats["count"] == summary["frames"]
        total_s = m[("adtr_stage_latency_seconds_sum", src + (("stage", stage),))]
        # the summary's mean is rounded to 0.001 ms, so mean x count is off by up to 0.0005 ms per frame
        assert total_s == pytest.approx(stats["mean"] * stats["count"] / 1e3, rel=1e-2, abs=max(1e-5, stats["count"] * 0.0005 / 1e3))
    assert m[("adtr_delivery_backlog", (("sink", "mqtt"),))] == spool.waiting > 0
    assert m[("adtr_threshold", ())] == summary["threshold"] and m[("adtr_running", ())] == 0
    if make_source is _lost_camera:
        assert summary["stopped_by"] == "source lost" and summary["reconnects"] == 1
        assert m[("adtr_source_live", src)] == 1
    else:
        assert summary["corrupt"] == 2 and m[("adtr_source_live", src)] == 0


def test_two_pipelines_keep_separate_registries(export_dir, tmp_path):
    a, b = Frontend(export_dir, announce=False), Frontend(export_dir, announce=False)
    run_stream(export_dir, _folder(tmp_path / "imgs"), backend="onnxruntime", extra_sinks=[a], print_summary=False,
               handle_signals=False)
    assert b"adtr_frames_total{source=" in a.metrics.text()
    assert b"adtr_frames_total{source=" not in b.metrics.text()  # nothing leaked through a global registry
