"""Webhook delivery against a real local HTTP server: failures are retried until every alarm
arrives in order, a spool written while the receiver is down is delivered by the next process,
a full spool drops and counts without blocking, and bad URLs are one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.mqtt_broker import free_port
from tests.runtime_fakes import write_fake_export, write_video

from adtr_edge.errors import AdtrError
from adtr_edge.runtime.cli import main as cli_main
from adtr_edge.runtime.delivery.factory import delivery_sinks
from adtr_edge.runtime.delivery.webhook import check_webhook_url
from adtr_edge.runtime.pipeline import run_stream

REPO = Path(__file__).resolve().parents[1]
PATTERN = [i % 10 in (3, 4, 5) for i in range(60)]  # 6 alarms: 12 alarm events
FAST = {"backoff": (0.02, 0.2), "drain_s": 20.0}


class Receiver:
    """http.server in a thread: answers 503 to the first ``fail_first`` POSTs, then 200, and keeps
    the bodies (and Idempotency-Key headers) of the accepted ones."""

    def __init__(self, fail_first: int = 0, port: int = 0):
        self.fail_first = fail_first
        self.requests = 0
        self.accepted: list[dict] = []
        self.keys: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                if outer.requests <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.accepted.append(json.loads(body))
                outer.keys.append(self.headers["Idempotency-Key"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("webhook_video") / "line.mp4", PATTERN, fps=15)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_fake_export(tmp_path_factory.mktemp("webhook_model") / "model")


def _alarms(path):
    return [e for e in map(json.loads, Path(path).read_text().splitlines()) if e["event"].startswith("alarm")]


def test_failing_receiver_gets_every_alarm_after_retries(model, video, tmp_path):
    rx = Receiver(fail_first=5)
    try:
        sinks = delivery_sinks(webhook=rx.url, spool=tmp_path / "spool", **FAST)
        summary = run_stream(model, str(video), events=tmp_path / "e.jsonl", extra_sinks=sinks, print_summary=False)
    finally:
        rx.close()
    want = _alarms(tmp_path / "e.jsonl")
    assert len(want) == 12
    assert [(e["event"], e["frame"]) for e in rx.accepted] == [(e["event"], e["frame"]) for e in want]
    assert rx.keys == [e["id"] for e in rx.accepted] and len(set(rx.keys)) == 12
    assert rx.requests == 12 + 5
    d = summary["delivery"]["webhook"]
    assert (d["delivered"], d["backlog"], d["dropped"], d["retries"]) == (12, 0, 0, 5)


def test_spool_survives_a_restart_and_the_next_process_delivers_first(model, video, tmp_path, caplog):
    port = free_port()  # the receiver is down during the first run
    url = f"http://127.0.0.1:{port}/hook"
    spool = tmp_path / "spool"
    with caplog.at_level(logging.WARNING, logger="adtr_edge.runtime.delivery"):
        first = run_stream(model, str(video), events=tmp_path / "first.jsonl", print_summary=False,
                           extra_sinks=delivery_sinks(webhook=url, spool=spool, backoff=(0.05, 0.2), drain_s=0.3))
    assert first["frames"] == 60 and first["delivery"]["webhook"]["backlog"] == 12
    assert any("POST" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)

    rx = Receiver(port=port)
    try:
        r = subprocess.run([sys.executable, "-m", "adtr_edge.runtime.cli", "stream", str(model), "--source", str(video),
                            "--webhook", url, "--spool", str(spool), "--events", str(tmp_path / "second.jsonl")],
                           cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        rx.close()
    assert r.returncode == 0, r.stderr
    assert "delivery    webhook: delivered 24  backlog 0  dropped 0" in r.stdout
    first_ids = {e["id"] for e in rx.accepted[:12]}
    want = _alarms(tmp_path / "first.jsonl") + _alarms(tmp_path / "second.jsonl")
    assert [(e["event"], e["frame"], e["time"]) for e in rx.accepted] == [(e["event"], e["frame"], e["time"]) for e in want]
    assert len({i.rsplit("-", 1)[0] for i in first_ids}) == 1 and len({e["id"] for e in rx.accepted}) == 24


def test_full_spool_drops_counts_and_does_not_block(model, tmp_path, caplog):
    many = write_video(tmp_path / "many.mp4", [i % 2 == 1 for i in range(200)])  # 100 alarms: 200 events
    url = f"http://127.0.0.1:{free_port()}/hook"  # nobody answers: everything stays spooled
    sinks = delivery_sinks(webhook=url, spool=tmp_path / "spool", spool_max_mb=4096 / 2**20, backoff=(0.05, 0.2), drain_s=0.2)
    with caplog.at_level(logging.ERROR, logger="adtr_edge.runtime.delivery"):
        s = run_stream(model, str(many), extra_sinks=sinks, print_summary=False)
    d = s["delivery"]["webhook"]
    assert s["frames"] == 200 and s["alarms"] == 100 and not s["errors"]  # the stream went on
    assert d["dropped"] > 0 and d["delivered"] == 0 and d["backlog"] + d["dropped"] == 200
    assert 0 < sinks[0].spool.bytes <= 4096
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1  # one line, not one per event


@pytest.mark.parametrize("url, message", [
    ("ftp://host/x", "use an http:// or https:// URL"),
    ("http://:80/x", "no host"),
    ("http://host:0x/x", "bad port"),
])
def test_bad_webhook_urls(url, message):
    with pytest.raises(AdtrError, match=message):
        check_webhook_url(url)


def test_cli_webhook_errors_are_one_line(model, video, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = cli_main(["stream", str(model), "--source", str(video), "--webhook", "http://127.0.0.1:1/x", "--spool", str(blocker / "spool")])
    assert rc == 2
    assert capsys.readouterr().err.strip().startswith(f"error: --spool {blocker / 'spool'}: cannot write there")
    rc = cli_main(["stream", str(model), "--source", str(video), "--webhook", "tcp://x"])
    assert rc == 2 and capsys.readouterr().err.strip() == "error: --webhook 'tcp://x': use an http:// or https:// URL"
    rc = cli_main(["stream", str(model), "--source", str(video), "--webhook", "http://127.0.0.1:1/x", "--spool", str(blocker)])
    assert rc == 2 and capsys.readouterr().err.strip() == f"error: --spool {blocker}: is a file, not a folder"


def test_a_failed_start_releases_the_spool(video, tmp_path, capsys):
    """A stream that cannot start (no model there) closes the delivery sinks it was given: the spool
    is free for the next try in the same process."""
    from adtr_edge.runtime.delivery.factory import spool_file
    from adtr_edge.runtime.delivery.spool import Spool

    url = "http://127.0.0.1:1/x"
    args = ["stream", str(tmp_path / "no-model"), "--source", str(video), "--webhook", url, "--spool", str(tmp_path / "sp")]
    assert cli_main(args) == 2
    assert "no-model" in capsys.readouterr().err
    Spool(spool_file(tmp_path / "sp", "webhook", url), 1000).close()  # not "in use"


def test_stream_help_lists_the_delivery_options(capsys):
    assert cli_main(["stream", "--help"]) == 0  # rich renders the help: no stray [markup] in it
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--mqtt", "--mqtt-frames", "--webhook", "--spool", "--spool-max-mb"))
