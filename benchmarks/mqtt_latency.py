"""Delivery latency of an alarm over MQTT: frame capture time to receipt by a subscriber, p50/p95.

    python benchmarks/mqtt_latency.py [--alarms 100] [--fps 30] [--model DIR] [--json FILE]

A local mosquitto broker (Debian's, started on a free port with a generated config, as in the
tests) and a QoS 1 subscriber on the alarms topic; ``run_stream`` reads a paced fake camera (a
live source at --fps, a 2-frame defect every 10 frames, so one alarm start and end each) through
the model and delivers with ``--mqtt`` semantics (spool on disk with synchronous=FULL, PUBACK
before removal). Per alarm event, three clocks in one process: the frame's capture time, the
moment the event reached the sinks (``on_alarm``), and the subscriber's receipt. Run twice:
alarms only, and with every frame's score published too (``--mqtt-frames``).

The broker and the fake model are the tests' (``tests/mqtt_broker.py``, ``tests/runtime_fakes.py``).
The default model is the tiny contract-following stand-in of the tests (scores brightness), so the
figure is the delivery path, not inference; ``--model`` measures a real export instead (frame to
receipt then includes inference).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adtr_edge.bench.scripts import from_checkout
from adtr_edge.runtime.delivery.factory import delivery_sinks
from adtr_edge.runtime.pipeline import run_stream
from adtr_edge.runtime.sinks import Sink
from adtr_edge.runtime.sources import ReconnectPolicy

_broker, _fakes = from_checkout("tests/mqtt_broker.py"), from_checkout("tests/runtime_fakes.py")
Broker, Subscriber, make_frame, write_fake_export = _broker.Broker, _broker.Subscriber, _fakes.make_frame, _fakes.write_fake_export


class PacedCamera:
    """cv2.VideoCapture look-alike: ``total`` frames at ``fps``, frames 4 and 5 of every 10 defective."""

    def __init__(self, total: int, fps: float):
        self.total, self.period, self.count, self.next_t = total, 1.0 / fps, 0, time.monotonic()
        self.frames = (make_frame(False), make_frame(True))

    def isOpened(self):
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        if self.count >= self.total:
            return False, None
        self.next_t += self.period
        time.sleep(max(0.0, self.next_t - time.monotonic()))
        self.count += 1
        return True, self.frames[int(self.count % 10 in (4, 5))].copy()

    def release(self):
        pass


class Clock(Sink):
    """When each alarm event reached the sinks (after inference), keyed like the payload."""

    def __init__(self):
        self.seen = {}

    def on_alarm(self, e):
        self.seen[(e.kind, e.frame)] = (e.timestamp, time.time())


def measure(model: Path, broker: Broker, alarms: int, fps: float, frames_too: bool, work: Path) -> dict:
    prefix = "bench-frames" if frames_too else "bench"
    sub = Subscriber(broker.port, [f"{prefix}/alarms"], client_id=f"latency-{prefix}")
    clock = Clock()
    sinks = delivery_sinks(mqtt=f"{broker.url}/{prefix}", mqtt_frames=frames_too, spool=work / f"spool-{prefix}", drain_s=30)
    opener = lambda target, api: PacedCamera(alarms * 10 + 1, fps)  # noqa: E731
    summary = run_stream(model, 0, opener=opener, extra_sinks=[*sinks, clock], print_summary=False, handle_signals=False,
                         reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
    sub.wait_for(lambda: len(sub.events(f"{prefix}/alarms")) >= len(clock.seen), timeout=30)
    sub.close()
    got = {}
    with sub.lock:
        for topic, payload, t_rx in sub.messages:
            e = json.loads(payload)
            if "frame" not in e:  # the status topic (online / the last will) carries no frame
                continue
            got.setdefault((e["event"], e["frame"]), t_rx)  # first copy: what a de-duplicating receiver acts on
    frame_to_rx, sink_to_rx = [], []
    for key, (t_frame, t_sink) in clock.seen.items():
        if key in got:
            frame_to_rx.append((got[key] - t_frame) * 1000)
            sink_to_rx.append((got[key] - t_sink) * 1000)

    def pct(v):
        a = np.asarray(v)
        return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
                "max": round(float(a.max()), 2)} if len(a) else None

    return {"frames_published": frames_too, "fps": fps, "frames": summary["frames"], "drops": summary["drops"],
            "alarm_events": len(clock.seen), "received": len(frame_to_rx), "delivery": summary["delivery"]["mqtt"],
            "frame_to_receipt_ms": pct(frame_to_rx), "sink_to_receipt_ms": pct(sink_to_rx)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alarms", type=int, default=100, help="alarms per run (each: a start and an end event)")
    ap.add_argument("--fps", type=float, default=30.0, help="camera frame rate")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the tests' tiny stand-in)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import paho.mqtt

    work = Path(tempfile.mkdtemp(prefix="mqtt-latency-"))
    model = args.model or write_fake_export(work / "model")
    broker = Broker(work / "broker")
    if not broker.exe:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    broker.start()
    try:
        runs = [measure(model, broker, args.alarms, args.fps, frames_too, work) for frames_too in (False, True)]
    finally:
        broker.stop()
    print(f"command: python benchmarks/mqtt_latency.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {platform.processor() or platform.machine()}, {platform.platform()}; python {platform.python_version()}, "
          f"paho-mqtt {paho.mqtt.__version__}, {Path(broker.exe).name} (localhost); model {'stand-in' if args.model is None else model}")
    print("| published | alarm events received / sent | frame -> receipt ms p50 / p95 / max | sink -> receipt ms p50 / p95 / max |")
    print("|---|---|---|---|")
    for r in runs:
        f, s = r["frame_to_receipt_ms"], r["sink_to_receipt_ms"]
        what = "alarms + every frame's score" if r["frames_published"] else "alarms only"
        print(f"| {what} | {r['received']} / {r['alarm_events']} | {f['p50']} / {f['p95']} / {f['max']} | "
              f"{s['p50']} / {s['p95']} / {s['max']} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
