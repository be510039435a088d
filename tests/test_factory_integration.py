"""The issue-13 parts together in one stream: two named sources batched through one model, a
webhook delivery sink against a real local HTTP server that fails its first requests, and the
metrics served by a real HTTP server. Each part has its own tests; this one proves they compose:
live status keeps per-source entries, backend counters and the delivery summary; every alarm of
both sources arrives, named and in order; the scraped counters equal the per-source summary and
the delivery backlog series shows the webhook sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.web_helpers import http  # skips without the factory extra
from tests.runtime_fakes import write_fake_export, write_video
from tests.test_delivery_webhook import Receiver

from adtr_edge.runtime.delivery.factory import delivery_sinks
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink
from adtr_edge.runtime.web.app import make_app
from adtr_edge.runtime.web.frontend import Frontend
from adtr_edge.runtime.web.server import HttpServer

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402  (after the skip in web_helpers)

PATTERNS = {"left": [i % 10 in (3, 4) for i in range(40)],  # 4 alarms: 8 alarm events
            "right": [i % 8 in (5, 6, 7) for i in range(40)]}  # 5 alarms: 10 alarm events


class StatusProbe(Sink):
    """Reads ``pipeline.status()`` from the sink thread while the stream runs."""

    def __init__(self, at: int):
        self.at, self.pipeline, self.status = at, None, None

    def attach(self, pipeline) -> None:
        self.pipeline = pipeline

    def on_frame(self, r) -> None:
        if self.status is None and r.frame.index == self.at:
            self.status = self.pipeline.status()


def _scrape(url: str) -> dict:
    code, _, body = http("GET", url)
    assert code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_fake_export(tmp_path_factory.mktemp("factory_model") / "model")


def test_two_sources_webhook_and_metrics_in_one_stream(model, tmp_path):
    videos = {name: write_video(tmp_path / f"{name}.mp4", pattern, fps=15) for name, pattern in PATTERNS.items()}
    rx = Receiver(fail_first=3)
    fe = Frontend(model, announce=False)  # metrics only; served below by a server the test owns
    server = HttpServer(make_app(fe, page=False), "127.0.0.1:0", "--metrics")
    probe = StatusProbe(at=20)
    try:
        sinks = delivery_sinks(webhook=rx.url, spool=tmp_path / "spool", backoff=(0.02, 0.2), drain_s=20.0)
        summary = run_stream(model, [(name, str(v)) for name, v in videos.items()], events=tmp_path / "events.jsonl",
                             extra_sinks=[fe, *sinks, probe], print_summary=False, handle_signals=False)
        m = _scrape(server.url + "metrics")
    finally:
        server.close()
        rx.close()

    # Live status: one entry per source (multi-source keys), the backend counters, the delivery summary.
    st = probe.status
    assert st is not None and set(st["sources"]) == {"left", "right"}
    for per in st["sources"].values():
        assert {"frames", "fps", "ended", "drops", "reconnects", "corrupt", "live", "alarm"} <= set(per)
    assert st["backend_reconnects"] == 0 and st["backend_gap_s"] == 0.0
    assert set(st["delivery"]) == {"webhook"}

    # Every alarm of both sources, named, in each source's order, ids unique; the first 3 POSTs retried.
    rows = [json.loads(line) for line in Path(tmp_path / "events.jsonl").read_text().splitlines()]
    want = [r for r in rows if r["event"].startswith("alarm")]
    assert len(want) == 18
    for name in PATTERNS:
        sent = [(e["event"], e["frame"]) for e in want if e["source"] == name]
        got = [(e["event"], e["frame"]) for e in rx.accepted if e["source"] == name]
        assert got == sent and len(sent) == {"left": 8, "right": 10}[name]
    assert len(rx.accepted) == 18 and len({e["id"] for e in rx.accepted}) == 18
    d = summary["delivery"]["webhook"]
    assert (d["delivered"], d["backlog"], d["dropped"], d["retries"]) == (18, 0, 0, 3)

    # Scraped counters equal the per-source summary; the webhook's backlog is a series.
    assert summary["frames"] == 80 and summary["stopped_by"] == "end of source"
    for name, per in summary["sources"].items():
        src = (("source", name),)
        assert m[("adtr_frames_total", src)] == per["frames"] == 40
        assert m[("adtr_anomalous_frames_total", src)] == per["anomalous"] > 0
        assert m[("adtr_alarms_total", src)] == per["alarms"] == {"left": 4, "right": 5}[name]
        assert ("adtr_source_fps", src) in m
    assert m[("adtr_delivery_backlog", (("sink", "webhook"),))] == d["backlog"]
