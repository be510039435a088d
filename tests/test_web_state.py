"""The web view's pieces without a server: bounded live state, the encoder that works only while
someone watches, and the preview overlay it draws."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.runtime_fakes import make_frame
from tests.web_helpers import wait_for

from adtr_edge.evaluation import visualize
from adtr_edge.postprocessing import Thresholds
from adtr_edge.runtime.detector import Detection
from adtr_edge.runtime.events import AlarmEvent, FrameResult
from adtr_edge.runtime.sources import Frame
from adtr_edge.runtime.web.encoder import Encoder, overlay_for_view
from adtr_edge.runtime.web.state import LiveState

T = Thresholds(0.5, 0.0, 1.0)


def _result(i: int, score: float, source: str = "cam", events=()) -> FrameResult:
    m = np.full((64, 64), score, np.float32)
    det = Detection(score, score, score >= T.threshold, m, (96, 128, 3), T, {"backbone": 1.0})
    return FrameResult(Frame(make_frame(score >= 0.5), i, 1000.0 + i), det, source, alarm=score >= 0.5, alarm_events=list(events))


def test_history_alarms_and_thumbnails_stay_bounded():
    state = LiveState(history=10, alarms=3)
    for i in range(100):
        events = [AlarmEvent("alarm_start", "cam", i, 1000.0 + i, 0.9, 0.9)] if i % 10 == 0 else []
        state.add_frame(_result(i, 0.9 if i % 10 == 0 else 0.1, events=events))
        if i % 10 == 0:
            state.put_thumbnail(state.take_thumbnails()[0][0], b"jpeg")
            state.add_event(AlarmEvent("alarm_end", "cam", i + 1, 1001.0 + i, 0.1, 0.1, start_frame=i, frames=1, peak_score=0.9))
    assert [p["frame"] for p in state.scores("cam")] == list(range(90, 100))
    assert [p["frame"] for p in state.scores("cam", after=97)] == [98, 99]
    alarms = state.alarm_list()
    assert [a["start_frame"] for a in alarms] == [90, 80, 70]  # newest first, three kept
    assert all(a["thumbnail"] and not a["active"] and a["end_frame"] == a["start_frame"] + 1 for a in alarms)
    assert sorted(state.thumbs) == sorted(a["id"] for a in alarms)  # pruned with their alarms


def test_encoder_works_only_while_a_source_is_watched():
    state = LiveState()
    enc = Encoder(state, max_fps=100)
    try:
        for i in range(20):
            state.add_frame(_result(i, 0.1))
        time.sleep(0.3)
        assert enc.encoded == 0 and state.poll("cam", mark=False)[0] is None  # nobody watches: nothing drawn
        state.watch("cam", +1)
        jpeg, index, _ = wait_for(lambda: state.poll("cam", mark=False)[0] and state.poll("cam", mark=False), 5, "a JPEG")
        assert jpeg[:2] == b"\xff\xd8" and index == 19  # the newest frame, not a backlog
        state.add_frame(_result(20, 0.1))
        wait_for(lambda: state.poll("cam", mark=False)[1] == 20, 5, "the next frame's JPEG")
        state.watch("cam", -1)
        done = enc.encoded
        for i in range(21, 30):
            state.add_frame(_result(i, 0.1))
        time.sleep(0.3)
        assert enc.encoded == done
    finally:
        enc.close()


def test_preview_overlay_matches_the_full_overlay_on_a_smooth_map():
    frame = make_frame(True, 240, 320)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    smooth = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 200.0)  # a blob: peak 1, background ~0
    full = visualize.overlay(frame, smooth, T).astype(np.int16)
    preview = visualize.preview_overlay(frame, smooth, T).astype(np.int16)
    assert preview.shape == full.shape == frame.shape
    assert np.abs(full - preview).mean() < 3.0  # same picture up to the interpolation order
    red = (preview[:, :, 2] == 255) & (preview[:, :, 1] == 0) & (preview[:, :, 0] == 0)
    assert red[60:180, 80:240].any() and not red[:30].any()  # the outline around the blob only


def test_view_overlay_shrinks_large_frames_and_reuses_a_drawn_overlay():
    r = _result(0, 0.9)
    r.frame.image = np.zeros((1080, 1920, 3), np.uint8)
    assert overlay_for_view(r).shape == (540, 960, 3)
    drawn = r.overlay  # another sink (--record) drew the full-size one
    assert drawn.shape == (1080, 1920, 3)
    assert overlay_for_view(r, 480).shape == (270, 480, 3)


@pytest.mark.parametrize("n", [1, 3])
def test_watch_counts_never_go_negative(n):
    state = LiveState()
    for _ in range(n):
        state.watch("cam", -1)
    state.watch("cam", +1)
    assert state.sources["cam"].streams == 1
