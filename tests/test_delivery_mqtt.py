"""MQTT delivery against a real mosquitto broker: an outage mid-stream loses nothing, order and
ids hold, the retained status and last will, an unreachable broker at start spools for the next
process, and bad input is one line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.runtime_fakes import write_fake_export, write_video

from adtr_edge.errors import AdtrError
from adtr_edge.runtime.cli import main as cli_main
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install -e '.[factory]')")
from tests.mqtt_broker import Broker, Subscriber, free_port, wait_until  # noqa: E402

from adtr_edge.runtime.delivery.factory import delivery_sinks  # noqa: E402
from adtr_edge.runtime.delivery.mqtt import parse_mqtt_url  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PATTERN = [i % 10 in (3, 4, 5) for i in range(90)]  # 9 alarms of 3 frames: 18 alarm events
FAST = {"reconnect_delay": (0.1, 0.5), "drain_s": 20.0}


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    if not b.exe:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("mqtt_video") / "line.mp4", PATTERN, fps=15)


def _export(tmp_path):
    return write_fake_export(tmp_path / "model")


def _jsonl(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def _first_by_id(events):
    """What a de-duplicating receiver keeps: the first copy of each id, in arrival order; and a
    check that a repeated id always carries the same event."""
    seen = {}
    for e in events:
        if e["id"] in seen:
            assert seen[e["id"]] == e, "one id, two different events"
        else:
            seen[e["id"]] = e
    return list(seen.values())


class Outage(Sink):
    """Stops the broker at one frame and starts it again at a later one (on the sink thread, so the
    stream really goes on without a broker in between); records the spool backlog at restart."""

    def __init__(self, broker, mqtt_sink, down_at, up_at):
        self.broker, self.mqtt, self.down_at, self.up_at = broker, mqtt_sink, down_at, up_at
        self.backlog_at_restart = self.status_at_restart = None

    def attach(self, pipeline):
        self.pipeline = pipeline

    def on_frame(self, r):
        if r.frame.index == self.down_at:
            self.broker.stop()
        elif r.frame.index == self.up_at:
            self.backlog_at_restart = self.mqtt.backlog()
            self.status_at_restart = self.pipeline.status()["delivery"]["mqtt"]  # what a web view / metrics read live
            self.broker.start()


def test_broker_outage_mid_stream_loses_nothing(broker, video, tmp_path, caplog):
    sub = Subscriber(broker.port, ["line1/#"])
    try:
        sinks = delivery_sinks(mqtt=broker.url + "/line1", mqtt_frames=True, spool=tmp_path / "spool", **FAST)
        outage = Outage(broker, sinks[0], down_at=30, up_at=60)
        with caplog.at_level(logging.INFO, logger="adtr_edge.runtime.delivery"):
            summary = run_stream(_export(tmp_path), str(video), events=tmp_path / "events.jsonl",
                                 extra_sinks=[*sinks, outage], print_summary=False)
        expected = _jsonl(tmp_path / "events.jsonl")
        want_alarms = [(e["event"], e["frame"]) for e in expected if e["event"].startswith("alarm")]
        assert len(want_alarms) == 18
        assert sub.wait_for(lambda: len({e["id"] for e in sub.events("line1/alarms")}) >= 18 and
                            len({e["id"] for e in sub.events("line1/frames")}) >= 90)
        alarms = _first_by_id(sub.events("line1/alarms"))
        frames = _first_by_id(sub.events("line1/frames"))
    finally:
        sub.close()
    # Every alarm, in stream order, each with its own id; every frame score too.
    assert [(e["event"], e["frame"]) for e in alarms] == want_alarms
    assert [e["frame"] for e in frames] == list(range(90))
    assert len({e["id"] for e in alarms + frames}) == 18 + 90
    assert all(e["source"] == str(video) for e in alarms)
    # The outage happened: events waited in the spool while the broker was down.
    assert outage.backlog_at_restart and outage.backlog_at_restart > 0
    assert outage.status_at_restart["backlog"] >= outage.backlog_at_restart and outage.status_at_restart["dropped"] == 0
    assert any("lost broker" in r.getMessage() for r in caplog.records)
    assert summary["delivery"]["mqtt"] == {**summary["delivery"]["mqtt"], "delivered": 108, "backlog": 0, "dropped": 0}
    print(f"outage: {outage.backlog_at_restart} events spooled while the broker was down; "
          f"received {len(alarms)} alarms + {len(frames)} frames, {len(sub.messages)} messages with duplicates")


def test_retained_status_online_then_offline_and_last_will(broker, tmp_path):
    spool = tmp_path / "spool"
    code = textwrap.dedent(f"""
        import sys, time
        from adtr_edge.runtime.delivery.factory import delivery_sinks
        sink = delivery_sinks(mqtt={broker.url + '/cell'!r}, spool={str(spool)!r})[0]
        sink.start()
        while not sink._connected:
            time.sleep(0.01)
        print("connected", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "connected"
        online = Subscriber(broker.port, ["cell/status"], client_id="status-1")
        assert online.wait_for(lambda: online.events("cell/status"))
        assert online.events("cell/status")[-1]["state"] == "online"
        online_time = online.events("cell/status")[-1]["time"]
        proc.send_signal(signal.SIGKILL)  # no clean stop: the broker publishes the last will
        proc.wait(10)
        assert online.wait_for(lambda: online.events("cell/status")[-1]["state"] == "offline")
        will = online.events("cell/status")[-1]
        assert will["reason"] == "connection lost" and online_time
        # Written at connect, sent at the loss: a time in it would predate the "online" it replaces.
        assert "time" not in will, f"the will says {will.get('time')}, the online status {online_time}"
        online.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    # A clean stop replaces the retained status with its own "offline".
    sink = delivery_sinks(mqtt=broker.url + "/cell", spool=spool, **FAST)[0]
    sink.start()
    assert wait_until(lambda: sink._connected, timeout=10)  # an unconnected sink has nothing to announce
    sink.close()
    later = Subscriber(broker.port, ["cell/status"], client_id="status-2")
    assert later.wait_for(lambda: later.events("cell/status"))
    assert later.events("cell/status")[-1] == {**later.events("cell/status")[-1], "state": "offline", "reason": "stopped"}
    later.close()


def test_unreachable_broker_at_start_spools_and_the_next_process_delivers(tmp_path, video, caplog):
    port = free_port()  # nothing listens there yet
    spool = tmp_path / "spool"
    model = _export(tmp_path)
    sinks = delivery_sinks(mqtt=f"mqtt://127.0.0.1:{port}/plant", spool=spool, reconnect_delay=(0.1, 0.5), drain_s=0.5)
    with caplog.at_level(logging.WARNING, logger="adtr_edge.runtime.delivery"):
        first = run_stream(model, str(video), events=tmp_path / "first.jsonl", extra_sinks=sinks, print_summary=False)
    assert first["frames"] == 90 and not first["errors"]  # the stream ran without its broker
    assert first["delivery"]["mqtt"]["delivered"] == 0 and first["delivery"]["mqtt"]["backlog"] == 18
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert any("stay in" in r.getMessage() for r in caplog.records)

    broker = Broker(tmp_path / "broker", port=port)
    if not broker.exe:
        pytest.skip("mosquitto is not installed")
    broker.start()
    sub = Subscriber(port, ["plant/alarms"])
    try:
        quiet = write_video(tmp_path / "quiet.mp4", [False] * 5)  # the next run has no alarms of its own
        r = subprocess.run([sys.executable, "-m", "adtr_edge.runtime.cli", "stream", str(model), "--source", str(quiet),
                            "--mqtt", f"mqtt://127.0.0.1:{port}/plant", "--spool", str(spool), "--summary", str(tmp_path / "s.json")],
                           cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 0, r.stderr
        assert "delivery    mqtt: delivered 18  backlog 0  dropped 0" in r.stdout
        assert sub.wait_for(lambda: len({e["id"] for e in sub.events("plant/alarms")}) >= 18)
        got = _first_by_id(sub.events("plant/alarms"))
    finally:
        sub.close()
        broker.stop()
    want = [e for e in _jsonl(tmp_path / "first.jsonl") if e["event"].startswith("alarm")]
    assert [(e["event"], e["frame"], e["time"]) for e in got] == [(e["event"], e["frame"], e["time"]) for e in want]
    assert len({e["id"].rsplit("-", 1)[0] for e in got}) == 1  # the ids the first run gave them


def test_a_backlog_is_delivered_under_its_own_topics_only(tmp_path):
    """Events spooled for prefix 'a' while the broker was down: a later stream to the same broker
    with prefix 'b' must not publish them under b/..., and the next 'a' stream delivers them."""
    from adtr_edge.runtime.events import AlarmEvent

    port = free_port()
    spool = tmp_path / "spool"
    first = delivery_sinks(mqtt=f"mqtt://127.0.0.1:{port}/a", spool=spool, reconnect_delay=(0.1, 0.5), drain_s=0.3)[0]
    first.start()
    first.on_alarm(AlarmEvent("alarm_start", "cam", 7, 1000.0, 0.9, 0.9, start_frame=7))
    first.close()
    assert first.summary()["delivery"]["mqtt"]["backlog"] == 1

    broker = Broker(tmp_path / "broker", port=port)
    if not broker.exe:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does)")
    broker.start()
    sub = Subscriber(port, ["a/alarms", "b/alarms"])
    try:
        other = delivery_sinks(mqtt=f"mqtt://127.0.0.1:{port}/b", spool=spool, **FAST)[0]
        other.start()
        assert wait_until(lambda: other._connected, timeout=10)
        other.close()
        same = delivery_sinks(mqtt=f"mqtt://127.0.0.1:{port}/a", spool=spool, **FAST)[0]
        same.start()
        assert sub.wait_for(lambda: sub.events("a/alarms"))
        same.close()
        assert sub.events("b/alarms") == []  # nothing of a's backlog under b's prefix
        assert [(e["event"], e["frame"]) for e in sub.events("a/alarms")] == [("alarm_start", 7)]
        assert other.summary()["delivery"]["mqtt"]["delivered"] == 0 and same.summary()["delivery"]["mqtt"]["delivered"] == 1
    finally:
        sub.close()
        broker.stop()


def test_cli_mqtt_and_summary(broker, video, tmp_path, capsys):
    sub = Subscriber(broker.port, ["adtr-edge/alarms"])
    try:
        rc = cli_main(["stream", str(_export(tmp_path)), "--source", str(video), "--mqtt", broker.url,
                       "--spool", str(tmp_path / "spool"), "--summary", str(tmp_path / "s.json")])
        assert rc == 0
        assert sub.wait_for(lambda: len(sub.events("adtr-edge/alarms")) >= 18)
    finally:
        sub.close()
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["delivery"]["mqtt"]["delivered"] == 18 and s["delivery"]["mqtt"]["backlog"] == 0
    assert "delivery    mqtt: delivered 18" in capsys.readouterr().out


@pytest.mark.parametrize("url, message", [
    ("http://host/x", "use mqtt://host"),
    ("mqtts://host", "TLS is not supported"),
    ("mqtt://host:99999", "bad port"),
    ("mqtt:///prefix", "no host"),
    ("mqtt://host/line/#", "wildcard"),
    ("mqtt://host/p?alarms=a/+/b", "wildcard"),
    ("mqtt://host/p?status=", "is empty"),
    ("mqtt://host/p?topic=x", "unknown option 'topic'"),
    ("mqtt://host/$SYS/x", "reserved for the broker"),
])
def test_bad_mqtt_urls(url, message):
    with pytest.raises(AdtrError, match=message.replace("+", r"\+").replace("$", r"\$")):
        parse_mqtt_url(url)


def test_topics_from_the_url():
    t = parse_mqtt_url("mqtt://u:p%40ss@broker:1884/plant/line1?frames=scores/line1")
    assert (t.host, t.port, t.username, t.password) == ("broker", 1884, "u", "p@ss")
    assert t.topics == {"alarms": "plant/line1/alarms", "frames": "scores/line1", "status": "plant/line1/status"}
    assert parse_mqtt_url("mqtt://h").topics["alarms"] == "adtr-edge/alarms"


@pytest.mark.parametrize("args, message", [
    (["--mqtt", "mqtt://h/a/#"], "--mqtt 'mqtt://h/a/#': has a wildcard (#); publish topics cannot"),
    (["--mqtt", "mqtt://h/a?frames=x/+"], "--mqtt: frames topic 'x/+' has a wildcard (+ or #); publish topics cannot"),
    (["--mqtt-frames"], "--mqtt-frames needs --mqtt URL"),
    (["--mqtt", "mqtt://127.0.0.1:1", "--spool-max-mb", "0"], "--spool-max-mb must be > 0, got 0"),
])
def test_cli_bad_input_is_one_line(video, tmp_path, capsys, args, message):
    rc = cli_main(["stream", str(_export(tmp_path)), "--source", str(video), "--spool", str(tmp_path / "sp"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {message}"
