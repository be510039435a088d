"""Many sources through one model (issue 13 item 4): per-source events and alarms, batching across
sources, one lost camera ending alone, unique names, and the --sources file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from tests.runtime_fakes import FakeCapture, ScriptedOpener, write_video

from adtr_edge.errors import AdtrError
from adtr_edge.runtime.cli import main as cli_main
from adtr_edge.runtime.pipeline import format_summary, run_stream
from adtr_edge.runtime.sinks import Sink
from adtr_edge.runtime.source_list import NamedSource, camera_entry, file_safe_names, load_source_list, split_name
from adtr_edge.runtime.sources import ReconnectPolicy, default_opener

N = 20
# A 5-frame defect (an alarm with --min-consecutive 3) and a 1-frame blip (none) at a different
# place in each video, so a frame or an alarm credited to the wrong source shows.
RUNS = {"left": (2, 14), "right": (6, 1), "top": (11, 3), "bottom": (0, 18)}


def pattern(name: str) -> list[bool]:
    start, blip = RUNS[name]
    return [start <= i < start + 5 or i == blip for i in range(N)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_videos")
    return {name: write_video(folder / f"{name}.mp4", pattern(name), fps=12) for name in RUNS}


def _events(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


class Collect(Sink):
    def __init__(self):
        self.frames, self.events, self.status = [], [], []

    def attach(self, pipeline):
        self.pipeline = pipeline

    def on_frame(self, r):
        self.frames.append((r.source, r.frame.index, r.detection.label, r.detection.batch_size))

    def on_alarm(self, e):
        self.events.append(e)
        self.status.append(self.pipeline.status())


def test_four_videos_per_source_events_alarms_and_outputs(export_dir, videos, tmp_path):
    ev, anomalies, rec = tmp_path / "events.jsonl", tmp_path / "anomalies", tmp_path / "rec" / "overlay.avi"
    seen = Collect()
    summary = run_stream(export_dir, [(name, str(path)) for name, path in videos.items()], events=ev,
                         save_anomalies=anomalies, record=rec, min_consecutive=3, extra_sinks=[seen],
                         gather_ms=2000, print_summary=False, handle_signals=False)
    events = _events(ev)
    for name in RUNS:
        start, _ = RUNS[name]
        frames = [e for e in events if e["event"] == "frame" and e["source"] == name]
        assert [e["frame"] for e in frames] == list(range(N))
        assert [e["label"] for e in frames] == pattern(name)
        assert [e["frame"] for e in frames if e["alarm"]] == [start + 2, start + 3, start + 4]
        alarms = [(e["event"], e["frame"]) for e in events if e["event"].startswith("alarm") and e["source"] == name]
        assert alarms == [("alarm_start", start + 2), ("alarm_end", start + 5)]  # ends at the first normal frame
        per = summary["sources"][name]
        assert per["frames"] == N and per["anomalous"] == 6 and per["alarms"] == 1 and per["ended_by"] == "end of source"
        assert per["source"] == str(videos[name]) and per["error"] is None
        # --save-anomalies: a subfolder per source with exactly its anomalous frames
        saved = sorted(p.name for p in (anomalies / name).iterdir())
        assert saved == sorted(f"{i:08d}_{k}.png" for i, a in enumerate(pattern(name)) if a for k in ("frame", "overlay"))
        # --record: a file per source, NAME as suffix, every frame in it
        cap = cv2.VideoCapture(str(rec.with_name(f"overlay-{name}.avi")))
        n = 0
        while cap.read()[0]:
            n += 1
        assert n == N
    # Each alarm event follows the frame (of its own source) that caused it.
    order = [(e["event"], e["source"], e["frame"]) for e in events]
    for i, (kind, src, frame) in enumerate(order):
        if kind == "alarm_start":
            assert order[i - 1] == ("frame", src, frame)
    # One model call per step carried a frame of every source (a long gather bound: all four).
    assert {b for *_, b in seen.frames} == {4}
    assert summary["frames"] == 4 * N and summary["anomalous"] == 24 and summary["alarms"] == 4
    assert summary["stopped_by"] == "end of source" and not summary["errors"] and summary["sources_lost"] == 0
    assert summary["source"] == "left, right, top, bottom"
    assert sorted(a["source"] for a in summary["alarm_list"]) == sorted(RUNS)
    assert summary["latency_ms"]["count"] == 4 * N
    text = format_summary(summary)
    assert all(f"  {name:<12}frames {N}" in text for name in RUNS)
    # status() during the run: one entry per source, with the contract's counters
    st = seen.status[-1]["sources"]
    assert set(st) == set(RUNS)
    assert all(set(c) >= {"frames", "drops", "corrupt", "reconnects", "error", "live", "alarm", "anomalous", "alarms"}
               for c in st.values())


def test_bottom_alarm_runs_to_the_end(export_dir, videos):
    """'bottom' (defect 0-4, blip at 18) and a source whose alarm is still on at its end."""
    folder = Path(videos["left"]).parent
    late = write_video(folder / "late.mp4", [i >= 17 for i in range(N)], fps=12)
    seen = Collect()
    run_stream(export_dir, [("late", str(late)), ("bottom", str(videos["bottom"]))], min_consecutive=2,
               extra_sinks=[seen], print_summary=False, handle_signals=False)
    by_source = {}
    for e in seen.events:
        by_source.setdefault(e.source, []).append((e.kind, e.frame, e.extra.get("reason")))
    assert by_source["late"] == [("alarm_start", 18, None), ("alarm_end", 19, "stream end")]
    assert by_source["bottom"] == [("alarm_start", 1, None), ("alarm_end", 5, None)]


def _routing_opener(captures: dict):
    """Scripted fake cameras for rtsp://cam/NAME, real OpenCV for files."""
    def opener(target, api):
        name = str(target).rsplit("/", 1)[-1]
        if str(target).startswith("rtsp://") and name in captures:
            return captures[name](target, api)
        return default_opener(target, api)
    return opener


def test_killing_one_live_source_leaves_the_other_three_running(export_dir, tmp_path):
    dies_after = 8
    cams = {n: ScriptedOpener([FakeCapture(None, period=0.01, defect_every=5)]) for n in ("a", "b", "c")}
    cams["d"] = ScriptedOpener([FakeCapture(dies_after, period=0.01)])  # then every reopen fails: lost for good
    seen = Collect()
    ev = tmp_path / "events.jsonl"
    summary = run_stream(export_dir, [(n, f"rtsp://cam/{n}") for n in "abcd"], opener=_routing_opener(cams),
                         events=ev, max_frames=60, extra_sinks=[seen], print_summary=False, handle_signals=False,
                         reconnect=ReconnectPolicy(initial_delay=0.01, max_attempts=1, read_failures=1))
    per = summary["sources"]
    assert per["d"]["ended_by"] == "source lost" and 1 <= per["d"]["frames"] <= dies_after
    assert per["d"]["frames"] + per["d"]["drops"] == dies_after
    assert per["d"]["error"] == "source 'rtsp://cam/d' lost and did not come back"
    assert summary["errors"] == ["d: source 'rtsp://cam/d' lost and did not come back"] and summary["sources_lost"] == 1
    for n in "abc":  # ran to their end (60 frames each), long after d was gone
        assert per[n]["frames"] == 60 and per[n]["ended_by"] == "max frames" and per[n]["error"] is None
    assert summary["stopped_by"] == "max frames"
    events = _events(ev)
    lost_at = [i for i, e in enumerate(events) if e["event"] == "source_lost"]
    assert len(lost_at) == 1 and events[lost_at[0]]["source"] == "d" and events[lost_at[0]]["name"] == "rtsp://cam/d"
    after = {e["source"] for e in events[lost_at[0]:] if e["event"] == "frame"}
    assert after == {"a", "b", "c"}
    # Live cameras give one frame per step: a batch never holds more frames than there are sources.
    assert max(b for *_, b in seen.frames) <= 4
    # status() at the lost event: d ended with its error, the others still running.
    (lost_status,) = [s for e, s in zip(seen.events, seen.status) if e.kind == "source_lost"]
    assert lost_status["sources"]["d"]["error"] and lost_status["sources"]["d"]["ended"] == "source lost"
    assert lost_status["running"] and all(lost_status["sources"][n]["ended"] is None for n in "abc")
    # The labels of the live frames follow the defect pattern of each camera (every 5th frame).
    assert all(e["label"] == ((e["frame"] + 1) % 5 == 0) for e in events if e["event"] == "frame" and e["source"] != "d")


def test_a_stalled_camera_does_not_hold_back_the_others(export_dir, videos):
    """A camera that gives one frame and then nothing for a long time: the video's frames still go
    through one by one (the wait for a source with nothing ready is bounded)."""
    cams = {"slow": ScriptedOpener([FakeCapture(None, period=1.0)])}
    seen = Collect()

    class StopAtVideoEnd(Sink):
        def attach(self, pipeline):
            self.pipeline = pipeline

        def on_frame(self, r):
            if r.source == "video" and r.frame.index == N - 1:
                self.pipeline.stop("test done")

    summary = run_stream(export_dir, [("video", str(videos["left"])), ("slow", "rtsp://cam/slow")],
                         opener=_routing_opener(cams), extra_sinks=[seen, StopAtVideoEnd()], print_summary=False,
                         handle_signals=False, reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
    assert [i for s, i, *_ in seen.frames if s == "video"] == list(range(N))
    assert summary["sources"]["slow"]["frames"] <= 2 and summary["stopped_by"] == "test done"


# -- names -----------------------------------------------------------------------------------------


def test_duplicate_names_are_refused_before_anything_opens(export_dir, videos):
    opener = ScriptedOpener([])
    with pytest.raises(AdtrError, match=r"two sources are named 'cam'.*names must be unique"):
        run_stream(export_dir, [("cam", "rtsp://x/1"), ("cam", "rtsp://x/2")], opener=opener, print_summary=False)
    with pytest.raises(AdtrError, match=r"two sources are named 'camera 0'"):
        run_stream(export_dir, [0, "0"], opener=opener, print_summary=False)  # default names from the spec
    assert opener.calls == []


def test_cli_duplicate_names_one_line(export_dir, videos, capsys):
    v = str(videos["left"])
    assert cli_main(["stream", str(export_dir), "--source", f"a={v}", "--source", f"a={videos['right']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "two sources are named 'a'" in err and len(err.splitlines()) == 1
    assert cli_main(["stream", str(export_dir), "--source", v, "--source", v]) == 2
    assert f"two sources are named {v!r}" in capsys.readouterr().err


def test_name_prefixes():
    assert split_name("left=rtsp://h/s?a=1&b=2") == NamedSource("rtsp://h/s?a=1&b=2", "left", "--source left=rtsp://h/s?a=1&b=2")
    assert split_name("rtsp://h/s?a=1").name is None
    assert split_name("videotestsrc pattern=ball ! appsink").name is None  # a pipeline, not a name
    entry = camera_entry("top=1")
    assert entry.spec == 1 and entry.name == "top"
    assert camera_entry("2").spec == 2 and camera_entry("2").name is None
    with pytest.raises(AdtrError, match=r"--camera 'top=x': expected a camera index"):
        camera_entry("top=x")


def test_an_existing_file_with_equals_in_its_name_is_not_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a=b.mp4").write_bytes(b"")
    assert split_name("a=b.mp4").name is None


def test_file_safe_names_collide():
    assert file_safe_names(["rtsp://h/1", "left"], "--record") == {"rtsp://h/1": "rtsp_h_1", "left": "left"}
    with pytest.raises(AdtrError, match=r"--record: sources 'a/b' and 'a_b' would both write to 'a_b'"):
        file_safe_names(["a/b", "a_b"], "--record")


# -- --sources FILE --------------------------------------------------------------------------------


def test_cli_sources_file_json(export_dir, videos, tmp_path, capsys):
    listing = tmp_path / "cams.json"
    listing.write_text(json.dumps([{"name": "left", "source": str(videos["left"])}, {"source": str(videos["right"])}]))
    summ = tmp_path / "s.json"
    assert cli_main(["stream", str(export_dir), "--sources", str(listing), "--events", "-", "--summary", str(summ)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for name, key in (("left", "left"), (str(videos["right"]), "right")):
        assert [e["label"] for e in lines if e["event"] == "frame" and e["source"] == name] == pattern(key)
    assert sorted(json.loads(summ.read_text())["sources"]) == sorted(["left", str(videos["right"])])


def test_sources_file_yaml(videos, tmp_path):
    pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    listing = tmp_path / "cams.yaml"
    listing.write_text(f"- name: left\n  source: {videos['left']}\n- name: usb\n  source: 0\n")
    assert load_source_list(listing) == [NamedSource(str(videos["left"]), "left", f"--sources {listing}: entry 1"),
                                         NamedSource(0, "usb", f"--sources {listing}: entry 2")]


@pytest.mark.parametrize("name, text, message", [
    ("bad.json", '[{"name": "a", "source": "x.mp4"},]', "not valid JSON at line 1 column"),
    ("obj.json", '{"name": "a", "source": "x.mp4"}', "expected a list of {{name, source}} entries, got dict"),
    ("empty.json", "[]", "the list is empty"),
    ("str.json", '["x.mp4"]', "entry 1: expected a mapping with 'source'"),
    ("nosrc.json", '[{"name": "a"}]', "entry 1: 'source' is missing"),
    ("extra.json", '[{"source": "x.mp4", "fps": 3}]', "entry 1: unknown key(s) fps"),
    ("badname.json", '[{"source": "x.mp4", "name": "a b"}]', "entry 1: source name 'a b' must be"),
    ("null.json", '[{"source": null}]', "entry 1: 'source' must be a camera index or a non-empty string"),
    ("dup.json", '[{"source": "rtsp://h/1", "name": "a"}, {"source": "rtsp://h/2", "name": "a"}]',
     "two sources are named 'a' (--sources {path}: entry 1; --sources {path}: entry 2)"),
    ("bad.yaml", "- name: a\n  source: [x\n", "not valid YAML at line"),
])
def test_cli_sources_file_errors_name_the_file(export_dir, tmp_path, capsys, name, text, message):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    path = tmp_path / name
    path.write_text(text)
    assert cli_main(["stream", str(export_dir), "--sources", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and message.format(path=path) in err and len(err.splitlines()) == 1


def test_cli_sources_file_missing_and_exclusive(export_dir, tmp_path, capsys):
    assert cli_main(["stream", str(export_dir), "--sources", str(tmp_path / "none.json")]) == 2
    assert f"--sources {tmp_path / 'none.json'}: file not found" in capsys.readouterr().err
    assert cli_main(["stream", str(export_dir), "--sources", str(tmp_path / "none.json"), "--camera", "0"]) == 2
    assert "exactly one of --camera N or --source S" in capsys.readouterr().err


def test_single_named_source_keeps_single_source_outputs(export_dir, videos, tmp_path):
    """One source with a name: events carry the name, outputs stay where a single source puts them."""
    out = tmp_path / "anomalies"
    seen = Collect()
    summary = run_stream(export_dir, [NamedSource(str(videos["left"]), "line1")], save_anomalies=out,
                         extra_sinks=[seen], print_summary=False, handle_signals=False)
    assert {s for s, *_ in seen.frames} == {"line1"} and summary["source"] == "line1"
    assert (out / "00000002_frame.png").is_file()  # no per-source subfolder
    assert list(summary["sources"]) == ["line1"]


def test_lost_source_in_a_single_source_stream_is_an_event(export_dir, tmp_path):
    ev = tmp_path / "e.jsonl"
    summary = run_stream(export_dir, "rtsp://cam/1", opener=ScriptedOpener([FakeCapture(3, period=0.005)]), events=ev,
                         print_summary=False, handle_signals=False,
                         reconnect=ReconnectPolicy(initial_delay=0.01, max_attempts=1, read_failures=1))
    last = _events(ev)[-1]
    assert last["event"] == "source_lost" and last["source"] == "rtsp://cam/1" and "did not come back" in last["reason"]
    assert summary["stopped_by"] == "source lost" and summary["sources"]["rtsp://cam/1"]["ended_by"] == "source lost"


def test_sources_take_turns_when_a_tensorrt_profile_caps_the_batch(tmp_path, videos, monkeypatch):
    """Three sources through engines built for batches of 1-2 (the simulated TensorRT 10 and GPU of
    tests/trt_standin): every step stays inside the profile and every frame of every source runs,
    in order, through the backend's overlapped infer_many."""
    import sys

    from adtr_edge.cuda import CudaRuntime
    from adtr_edge.engine.builder import BuildOptions, build_engines
    from adtr_edge.engine.manifest import Profile
    from adtr_edge.engine.trt_api import TrtApi
    from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
    from adtr_edge.runtime.detector import Detector
    from adtr_edge.runtime.pipeline import Pipeline
    from adtr_edge.runtime.sources import open_source
    from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
    from tests.trt_standin.graphs import make_export

    rt = make_cudart()
    trt = make_tensorrt("10.3.0.30", cudart=rt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    api, cuda = TrtApi(trt), CudaRuntime(rt)
    build_engines(make_export(tmp_path / "export"), tmp_path / "engines", "m",
                  BuildOptions(precision="fp32", profile=Profile(1, 1, 2)), api=api, cuda=cuda, log=lambda s: None)
    detector = Detector(TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda))
    names = ["left", "right", "top"]
    seen = Collect()
    try:
        with pytest.raises(AdtrError, match=r"--batch 3 is more than the engines' profile allows \(max batch 2\)"):
            Pipeline(detector, [(n, open_source(str(videos[n]))) for n in names], [], batch=3)
        pipeline = Pipeline(detector, [(n, open_source(str(videos[n]))) for n in names], [seen], gather_s=1.0)
        summary = pipeline.run()
    finally:
        detector.close()
    assert not summary["errors"] and summary["frames"] == 3 * N
    for n in names:
        assert [i for s, i, *_ in seen.frames if s == n] == list(range(N))
    assert {b for *_, b in seen.frames} == {2}  # full steps of two; the three sources took turns
