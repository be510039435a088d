"""Frame sources: spellings, live capture with drops and reconnection, files and folders."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from tests.runtime_fakes import FakeCapture, ScriptedOpener, make_frame, write_video

from adtr_edge.errors import AdtrError
from adtr_edge.runtime import sources
from adtr_edge.runtime.sources import ReconnectPolicy, open_source, parse_source

FAST = ReconnectPolicy(initial_delay=0.01, max_delay=0.02, max_attempts=3, read_failures=1)


def test_parse_spellings(tmp_path):
    assert parse_source(0).kind == "camera" and parse_source("2").target == 2
    csi = parse_source("csi://1?width=1920&height=1080&fps=60")
    assert csi.kind == "csi" and csi.api == cv2.CAP_GSTREAMER
    assert "nvarguscamerasrc sensor-id=1 !" in csi.target
    assert "width=1920,height=1080,framerate=60/1" in csi.target and csi.target.endswith("appsink drop=1 max-buffers=1 sync=false")
    assert parse_source("csi://0").target.startswith("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720")
    v = parse_source("v4l2:///dev/video3")
    assert v.kind == "v4l2" and v.target == "/dev/video3"
    assert parse_source("rtsp://cam.local/stream").kind == "stream"
    g = parse_source("videotestsrc ! videoconvert ! appsink")
    assert g.kind == "gstreamer" and g.api == cv2.CAP_GSTREAMER
    video = write_video(tmp_path / "clip.avi", [False])
    assert parse_source(f"file://{video}").kind == "video"
    cv2.imwrite(str(tmp_path / "a.png"), make_frame(False))
    assert parse_source(str(tmp_path)).kind == "images"
    assert parse_source(str(tmp_path / "*.png")).target == [tmp_path / "a.png"]
    assert parse_source(str(tmp_path / "a.png")).kind == "images"
    assert all(parse_source(s).live for s in (0, "csi://0", "v4l2:///dev/video0", "rtsp://x", "a ! b"))
    assert not parse_source(str(tmp_path)).live


@pytest.mark.parametrize("spec, message", [
    ("missing.mp4", "source not found: 'missing.mp4'"),
    ("nothing/*.png", "matches no image files"),
    ("csi://x", "expected csi://N"),
    ("", "source: empty"),
])
def test_bad_spellings(spec, message):
    with pytest.raises(AdtrError, match=message):
        parse_source(spec)


def test_empty_folder(tmp_path):
    with pytest.raises(AdtrError, match="holds no image files"):
        parse_source(str(tmp_path))


def test_gstreamer_missing_is_explained(monkeypatch):
    monkeypatch.setattr(sources, "gstreamer_available", lambda: False)
    with pytest.raises(AdtrError, match="csi://0.*needs OpenCV with GStreamer"):
        open_source("csi://0")


def test_gstreamer_detection_reads_build_information():
    line = [l for l in cv2.getBuildInformation().splitlines() if l.strip().startswith("GStreamer:")]
    expected = bool(line) and "YES" in line[0].upper()
    assert sources.gstreamer_available() is expected


def test_unopenable_live_source_names_it():
    opener = ScriptedOpener([None])
    with pytest.raises(AdtrError, match=r"cannot open source 'camera 7'"):
        open_source(7, opener=opener, reconnect=FAST)
    assert opener.calls == [(7, cv2.CAP_ANY)]


def test_unopenable_video_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(AdtrError, match="cannot open video file .*broken.mp4"):
        open_source(str(bad))


def test_csi_source_opens_the_pipeline_through_gstreamer(monkeypatch):
    opener = ScriptedOpener([FakeCapture(3)])
    src = open_source("csi://0", opener=opener, reconnect=ReconnectPolicy(max_attempts=0))
    frames = list(src)
    src.close()
    target, api = opener.calls[0]
    assert target.startswith("nvarguscamerasrc") and api == cv2.CAP_GSTREAMER
    assert 1 <= len(frames) <= 3


def test_live_source_reconnects_after_failing_mid_stream():
    # 5 frames, the cable is pulled, one reopen fails, the next brings the camera back for 5 more.
    opener = ScriptedOpener([FakeCapture(5, period=0.01), None, FakeCapture(5, period=0.01)])
    src = open_source("rtsp://camera/stream", opener=opener, reconnect=FAST)
    frames = list(src)  # ends when the second capture fails and reconnection gives up
    src.close()
    assert src.reconnects == 1
    assert len(opener.calls) == 2 + 1 + FAST.max_attempts  # first open, failed reopen, reopen, final tries
    assert src.frames == len(frames) and len(frames) + src.drops == 10
    assert src.error == "source 'rtsp://camera/stream' lost and did not come back"
    # Indices count captured frames, so both halves arrive, in order.
    idx = [f.index for f in frames]
    assert idx == sorted(idx) and idx[-1] == 9


def test_live_source_keeps_only_the_newest_frame_and_counts_drops():
    opener = ScriptedOpener([FakeCapture(40, period=0.002)])
    src = open_source(0, opener=opener, reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
    got = []
    for f in src:
        got.append(f.index)
        time.sleep(0.02)  # a consumer ten times slower than the camera
    src.close()
    assert src.drops > 0 and len(got) + src.drops == 40
    assert got == sorted(got) and got[-1] == 39  # the newest frame always wins


def test_live_source_stops_promptly():
    src = open_source(0, opener=ScriptedOpener([FakeCapture(None, period=0.005)]), reconnect=FAST)
    it = iter(src)
    next(it)
    t0 = time.perf_counter()
    src.close()
    rest = list(it)
    assert time.perf_counter() - t0 < 2.0 and len(rest) <= 1
    assert not src._thread.is_alive()


def test_video_file_yields_every_frame_in_order(tmp_path):
    pattern = [False, True, False, False, True]
    src = open_source(str(write_video(tmp_path / "v.avi", pattern, fps=12.5)))
    frames = list(src)
    assert [f.index for f in frames] == list(range(5))
    assert [bool(f.image.mean() > 60) for f in frames] == pattern
    assert src.fps == pytest.approx(12.5) and src.drops == 0


def test_corrupt_image_in_a_folder_is_skipped_and_counted(tmp_path, caplog):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), make_frame(i == 1))
    (tmp_path / "img1b.png").write_bytes(b"\x89PNG truncated")
    src = open_source(str(tmp_path))
    with caplog.at_level("WARNING"):
        frames = list(src)
    assert [f.name.rsplit("/", 1)[-1] for f in frames] == ["img0.png", "img1.png", "img2.png"]
    assert src.corrupt == 1 and src.frames == 3
    assert "img1b.png" in caplog.text


def test_reconnect_policy_delays():
    p = ReconnectPolicy(initial_delay=0.5, max_delay=2.0, factor=2.0, max_attempts=5)
    assert list(p.delays()) == [0.5, 1.0, 2.0, 2.0, 2.0]
    forever = ReconnectPolicy(max_attempts=None).delays()
    assert len([next(forever) for _ in range(100)]) == 100


def test_frames_are_bgr_arrays():
    src = open_source(0, opener=ScriptedOpener([FakeCapture(2)]), reconnect=ReconnectPolicy(max_attempts=0, read_failures=1))
    f = next(iter(src))
    src.close()
    assert isinstance(f.image, np.ndarray) and f.image.shape == (96, 128, 3) and f.timestamp > 0
