"""The streaming pipeline end to end: events, alarms, sinks, summary, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import pytest
from tests.runtime_fakes import FakeCapture, ScriptedOpener, make_frame, write_video

from adtr_edge.errors import AdtrError
from adtr_edge.runtime.cli import main as cli_main
from adtr_edge.runtime.pipeline import AlarmTracker, format_summary, run_stream
from adtr_edge.runtime.events import iso_utc
from adtr_edge.runtime.sinks import Sink
from adtr_edge.runtime.sources import ReconnectPolicy

REPO = Path(__file__).resolve().parents[1]
PATTERN = [i in (5, 6, 7, 8, 9, 14) for i in range(20)]  # a 5-frame defect and a 1-frame blip


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("runtime_video") / "line.mp4", PATTERN, fps=15)


def _events(path):
    lines = Path(path).read_text().splitlines()
    return [json.loads(l) for l in lines]  # every line must be complete JSON


def _frame_events_so_far(path) -> int:
    """Frame events in a file still being written (a last line without its newline is not counted)."""
    if not Path(path).exists():
        return 0
    complete = Path(path).read_text().split("\n")[:-1]
    return sum(1 for line in complete if json.loads(line).get("event") == "frame")


def test_video_stream_events_labels_and_alarms(export_dir, video, tmp_path):
    events_file = tmp_path / "events.jsonl"
    summary = run_stream(export_dir, str(video), events=events_file, min_consecutive=3,
                         summary_path=tmp_path / "summary.json", print_summary=False)
    events = _events(events_file)
    frames = [e for e in events if e["event"] == "frame"]
    assert [e["frame"] for e in frames] == list(range(20))
    assert [e["label"] for e in frames] == PATTERN
    assert all((e["normalized_score"] > 0.5) == e["label"] for e in frames)
    assert all(set(e["ms"]) >= {"preprocess", "backbone", "transformer", "postprocess"} for e in frames)
    assert all(e["source"] == str(video) and e["time"].endswith("Z") and len(e["time"]) == 24 for e in frames)
    # Debounced: the alarm starts on the 3rd anomalous frame and ends at the first normal one;
    # the 1-frame blip at 14 is anomalous but raises no alarm.
    assert [e["frame"] for e in frames if e["alarm"]] == [7, 8, 9]
    alarms = [e for e in events if e["event"].startswith("alarm")]
    assert [(e["event"], e["frame"]) for e in alarms] == [("alarm_start", 7), ("alarm_end", 10)]
    assert alarms[1]["start_frame"] == 5 and alarms[1]["frames"] == 5
    # Each alarm event follows the frame that caused it.
    order = [(e["event"], e["frame"]) for e in events]
    assert order.index(("alarm_start", 7)) == order.index(("frame", 7)) + 1
    assert order.index(("alarm_end", 10)) == order.index(("frame", 10)) + 1
    assert summary["frames"] == 20 and summary["anomalous"] == 6 and summary["alarms"] == 1
    assert summary["drops"] == 0 and summary["stopped_by"] == "end of source" and not summary["errors"]
    assert summary["alarm_list"] == [{"start_frame": 5, "end_frame": 10, "frames": 5, "peak_score": alarms[1]["peak_score"]}]
    stages = summary["stages_ms"]
    assert stages["backbone"]["count"] == 20 and stages["backbone"]["p50"] <= stages["backbone"]["p95"]
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_micro_batching_gives_the_same_labels(export_dir, video):
    seen = []

    class Collect(Sink):
        def on_frame(self, r):
            seen.append((r.frame.index, r.detection.label, r.detection.batch_size))

    summary = run_stream(export_dir, str(video), batch=8, extra_sinks=[Collect()], print_summary=False)
    assert [s[:2] for s in seen] == list(zip(range(20), PATTERN))
    assert [s[2] for s in seen] == [8] * 16 + [4] * 4
    assert summary["frames"] == 20


def test_max_frames_and_threshold_override(export_dir, video, tmp_path):
    ev = tmp_path / "e.jsonl"
    summary = run_stream(export_dir, str(video), events=ev, threshold=0.05, max_frames=4, print_summary=False)
    frames = [e for e in _events(ev) if e["event"] == "frame"]
    assert len(frames) == 4 and all(e["label"] for e in frames)  # every frame is above 0.05
    assert summary["stopped_by"] == "max frames" and summary["threshold"] == 0.05


def test_alarm_still_active_at_the_end_is_closed():
    from adtr_edge.postprocessing import Thresholds
    from adtr_edge.runtime.detector import Detection
    from adtr_edge.runtime.sources import Frame
    import numpy as np

    t = Thresholds(0.5, 0.0, 1.0)
    tracker = AlarmTracker("cam", min_consecutive=2)
    evs = []
    for i, lab in enumerate([True, False, True, True, True]):
        d = Detection(0.9 if lab else 0.1, 0.9 if lab else 0.1, lab, np.zeros((2, 2), np.float32), (2, 2), t)
        evs += tracker.update(Frame(np.zeros((2, 2)), i, 0.0), d)
    evs += tracker.finish()
    assert [(e.kind, e.frame) for e in evs] == [("alarm_start", 3), ("alarm_end", 4)]
    assert evs[-1].to_dict()["reason"] == "stream end" and evs[-1].frames == 3
    with pytest.raises(AdtrError, match="--min-consecutive"):
        AlarmTracker("cam", 0)


def test_saved_anomalies_and_recording(export_dir, video, tmp_path):
    out = tmp_path / "anomalies"
    rec = tmp_path / "rec" / "overlay.mp4"
    run_stream(export_dir, str(video), save_anomalies=out, record=rec, print_summary=False)
    names = sorted(p.name for p in out.iterdir())
    anomalous = [i for i, a in enumerate(PATTERN) if a]
    assert names == sorted([f"{i:08d}_frame.png" for i in anomalous] + [f"{i:08d}_overlay.png" for i in anomalous])
    assert cv2.imread(str(out / "00000005_overlay.png")).shape == (96, 128, 3)
    cap = cv2.VideoCapture(str(rec))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(15)
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 20
    assert not list(rec.parent.glob(".tmp-*"))


def test_recording_fps_falls_back_to_10_when_unknown(export_dir, tmp_path):
    rec = tmp_path / "live.avi"
    opener = ScriptedOpener([FakeCapture(6, period=0.01)])  # reports CAP_PROP_FPS 0
    run_stream(export_dir, 0, record=rec, opener=opener, print_summary=False,
               reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
    cap = cv2.VideoCapture(str(rec))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10)


def test_show_without_gui_is_a_clear_error(export_dir, video):
    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV has a GUI")
    except cv2.error:
        pass
    with pytest.raises(AdtrError, match="--show needs OpenCV with GUI support"):
        run_stream(export_dir, str(video), show=True, print_summary=False)


def test_lost_live_source_is_reported(export_dir, tmp_path):
    opener = ScriptedOpener([FakeCapture(5, period=0.005)])
    summary = run_stream(export_dir, "rtsp://cam/1", opener=opener, events=tmp_path / "e.jsonl", print_summary=False,
                         reconnect=ReconnectPolicy(initial_delay=0.01, max_attempts=2, read_failures=1))
    assert summary["stopped_by"] == "source lost"
    assert summary["errors"] == ["source 'rtsp://cam/1' lost and did not come back"]
    assert summary["frames"] >= 1 and summary["frames"] + summary["drops"] == 5


def test_failing_sink_does_not_hang_the_stream(export_dir, video):
    class Broken(Sink):
        def on_frame(self, r):
            raise OSError("disk full")

    closed = []

    class Watch(Sink):
        def close(self):
            closed.append(True)

    summary = run_stream(export_dir, str(video), extra_sinks=[Broken(), Watch()], print_summary=False)
    assert summary["stopped_by"] == "sink error"
    assert summary["errors"] == ["Broken failed: OSError: disk full"] and closed == [True]


def test_sigint_in_process_stops_cleanly(export_dir, tmp_path, capsys):
    ev = tmp_path / "e.jsonl"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup or a background job
    opener = ScriptedOpener([FakeCapture(None, period=0.005, defect_every=4)])  # a camera that never ends
    threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGINT)).start()
    summary = run_stream(export_dir, 0, opener=opener, events=ev,
                         reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
    assert summary["stopped_by"] == "SIGINT" and summary["frames"] > 0
    frames = [e for e in _events(ev) if e["event"] == "frame"]
    assert len(frames) == summary["frames"]
    assert "frames      %d" % summary["frames"] in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored


SUBPROCESS = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from tests.runtime_fakes import FakeCapture, ScriptedOpener
    from adtr_edge.runtime.pipeline import run_stream
    from adtr_edge.runtime.sources import ReconnectPolicy
    run_stream({model!r}, 0, events={events!r}, summary_path={summary!r},
               opener=ScriptedOpener([FakeCapture(None, period=0.005, defect_every=3)]),
               reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_a_streaming_process(export_dir, tmp_path, sig):
    ev, summ = tmp_path / "e.jsonl", tmp_path / "s.json"
    code = SUBPROCESS.format(repo=str(REPO), model=str(export_dir), events=str(ev), summary=str(summ))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and _frame_events_so_far(ev) < 5:  # frames, not alarm lines, as asserted below
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(summ.read_text())
    assert summary["stopped_by"] == signal.Signals(sig).name
    frames = [e for e in _events(ev) if e["event"] == "frame"]
    assert len(frames) == summary["frames"] >= 5
    assert "stage ms" in out and "throughput" in out


def test_cli_stream_command(export_dir, video, tmp_path, capsys):
    summ = tmp_path / "s.json"
    rc = cli_main(["stream", str(export_dir), "--source", str(video), "--events", "-", "--batch", "4",
                   "--min-consecutive", "2", "--summary", str(summ)])
    captured = capsys.readouterr()
    assert rc == 0
    lines = [json.loads(l) for l in captured.out.splitlines()]
    assert [l["label"] for l in lines if l["event"] == "frame"] == PATTERN
    assert "throughput" in captured.err  # the summary goes to stderr when events use stdout
    assert json.loads(summ.read_text())["alarms"] == 1


@pytest.mark.parametrize("args, message", [
    (["--camera", "0", "--source", "x"], "exactly one of --camera N or --source S"),
    ([], "exactly one of --camera N or --source S"),
    (["--source", "nowhere.mp4"], "source not found: 'nowhere.mp4'"),
    (["--camera", "0", "--threshold", "nan"], "--threshold nan: must be a finite number"),
])
def test_cli_errors(export_dir, capsys, args, message):
    assert cli_main(["stream", str(export_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_unopenable_camera(export_dir, capsys):
    assert cli_main(["stream", str(export_dir), "--camera", "57"]) == 2
    assert "cannot open source 'camera 57'" in capsys.readouterr().err


def test_iso_time_format():
    assert iso_utc(0.1234) == "1970-01-01T00:00:00.123Z"


def test_format_summary_lists_stages(export_dir, video):
    s = run_stream(export_dir, str(video), max_frames=3, print_summary=False)
    text = format_summary(s)
    for stage in ("preprocess", "backbone", "transformer", "postprocess"):
        assert stage in text


# -- bad input found by trying it (issue 14) --------------------------------------------------


def test_nan_threshold_is_refused_before_the_model_loads(export_dir, video):
    with pytest.raises(AdtrError, match=r"--threshold nan: must be a finite number"):
        run_stream(export_dir, str(video), threshold=float("nan"), print_summary=False)


def test_record_into_an_unwritable_path_fails_at_start(export_dir, video, tmp_path):
    taken = tmp_path / "rec.mp4"
    taken.mkdir()  # the name is a folder: the final rename would fail only after the whole stream
    events_file = tmp_path / "events.jsonl"
    with pytest.raises(AdtrError, match=r"--record .*rec\.mp4: is a folder"):
        run_stream(export_dir, str(video), record=taken, events=events_file, print_summary=False)
    assert not events_file.exists() or not events_file.read_text()  # no frame ran


def test_corrupt_images_of_a_folder_are_events(export_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, kind in enumerate(["ok", "bad", "ok", "ok", "bad"]):
        path = folder / f"{i:03d}.png"
        if kind == "ok":
            cv2.imwrite(str(path), make_frame(False))
        else:
            path.write_bytes(b"not a png")
    events_file = tmp_path / "events.jsonl"
    summary = run_stream(export_dir, str(folder), events=events_file, batch=2, print_summary=False)
    order = [(e["event"], Path(e["name"]).name) for e in _events(events_file)]
    assert order == [("frame", "000.png"), ("corrupt", "001.png"), ("frame", "002.png"), ("frame", "003.png"),
                     ("corrupt", "004.png")]
    corrupt = [e for e in _events(events_file) if e["event"] == "corrupt"]
    assert all(e["reason"] and e["time"].endswith("Z") for e in corrupt) and corrupt[0]["frame"] == 1
    assert summary["corrupt"] == 2


def test_ctrl_c_in_the_runtime_cli_exits_130(export_dir, monkeypatch, capsys):
    import adtr_edge.runtime.pipeline as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_stream", interrupted)
    assert cli_main(["stream", str(export_dir), "--camera", "0"]) == 130
    assert "aborted" in capsys.readouterr().err


def test_sinks_are_attached_and_see_live_status(export_dir, video):
    class Watcher(Sink):
        def attach(self, pipeline):
            self.pipeline = pipeline
            self.seen = []

        def on_frame(self, r):
            self.seen.append(self.pipeline.status())

    w = Watcher()
    summary = run_stream(export_dir, video, backend="onnxruntime", extra_sinks=[w], print_summary=False, handle_signals=False)
    assert len(w.seen) == summary["frames"]
    last = w.seen[-1]
    # the sink thread trails inference by at most the bounded queue (4 batches), so early frames
    # see a running pipeline; the last may already see inference finished
    assert w.seen[0]["running"] and last["frames"] == summary["frames"]
    assert last["backend"] == summary["backend"] and last["threshold"] == summary["threshold"]
    (label, src), = last["sources"].items()
    assert label == summary["source"] and src["anomalous"] == summary["anomalous"]
    assert [s["frames"] for s in w.seen] == sorted(s["frames"] for s in w.seen)
    assert not w.pipeline.status()["running"]  # after the run
