"""What the web view shows, in bounded memory: per source the latest processed frame (not yet
encoded), its JPEG once the encoder made one, the recent scores, and the last alarms with
thumbnails.

Writers: the pipeline's sink thread (``add_frame`` / ``add_event``: a few appends under a lock,
never an encode) and the encoder thread (``put_jpeg`` / ``put_thumbnail``). Readers: the server's
threads. Every list is a ``deque`` with a ``maxlen``, so a stream of days keeps flat memory.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Dict, List, Optional, Tuple

SCORE_HISTORY = 600  # points per source on the chart (a minute at 10 FPS)
ALARM_HISTORY = 50  # alarms listed, newest first
WATCH_GRACE_S = 2.0  # a polled /frame.jpg counts as a watcher this long
MAX_SOURCES = 64  # views a client may open before the stream names its sources
# Frames an operator can still review, kept as references to frames the stream made anyway: the
# newest of each source (the page lists the last 12; a few more cover its polling delay) and the
# frame of each of the newest alarms (the page shows 20). A 1080p frame is 6 MB, so this bounds
# the view's extra memory to (24 per source + 20) frames.
REVIEW_RECENT = 24
REVIEW_ALARMS = 20


class SourceView:
    """One source's slots."""

    def __init__(self, label: str, history: int):
        self.label = label
        self.latest = None  # FrameResult: the newest frame, encoded only if someone watches
        self.version = 0  # bumps with every frame
        self.jpeg: Optional[bytes] = None
        self.jpeg_version = 0  # version the JPEG was made from
        self.jpeg_frame: Optional[int] = None
        self.scores: deque = deque(maxlen=history)
        self.recent: deque = deque(maxlen=REVIEW_RECENT)  # FrameResults an operator may review
        self.streams = 0  # open MJPEG responses
        self.polled_at = 0.0  # last /frame.jpg request (monotonic)


class LiveState:
    def __init__(self, history: int = SCORE_HISTORY, alarms: int = ALARM_HISTORY):
        self.lock = threading.Lock()
        self.wake = threading.Event()  # the encoder waits on it: a new frame someone watches, or a thumbnail
        self.history = history
        self.sources: Dict[str, SourceView] = {}
        self.alarms: deque = deque(maxlen=alarms)  # dicts, oldest first
        self.thumbs: Dict[int, bytes] = {}  # alarm id -> JPEG; pruned with the alarms
        self.pending_thumbs: deque = deque(maxlen=alarms)  # (alarm id, FrameResult) for the encoder
        self._ids = itertools.count(1)
        self._open: Dict[Tuple[str, int], dict] = {}  # (source, start frame) -> the alarm dict
        self.alarm_frames: Dict[int, object] = {}  # alarm id -> its FrameResult, for the newest REVIEW_ALARMS
        self.reviews: Dict[Tuple[str, int], dict] = {}  # (source, frame) -> the review written for it

    def _source(self, label: str) -> SourceView:
        view = self.sources.get(label)
        if view is None:
            view = self.sources[label] = SourceView(label, self.history)
        return view

    # -- sink thread ----------------------------------------------------------------------------
    def add_frame(self, r) -> None:
        d = r.detection
        point = {"frame": r.frame.index, "time": round(r.frame.timestamp, 3), "score": round(d.score, 6),
                 "label": bool(d.label), "threshold": d.thresholds.threshold, "alarm": bool(r.alarm)}
        if r.frame.name is not None:
            point["name"] = r.frame.name
        with self.lock:
            view = self._source(r.source)
            view.latest = r
            view.version += 1
            view.scores.append(point)
            view.recent.append(r)
            watched = self._watched(view)
            for e in r.alarm_events:
                if e.kind == "alarm_start":
                    self._start_alarm(e, r)
                    watched = True
        if watched:
            self.wake.set()

    def _start_alarm(self, e, r) -> None:
        # With --min-consecutive N the start event fires at the run's N-th frame, but the alarm
        # (and its end event's start_frame) begins at the run's first: key and show it by that.
        start = e.start_frame if e.start_frame is not None else e.frame
        alarm = {"id": next(self._ids), "source": e.source, "start_frame": start, "time": round(e.timestamp, 3),
                 "score": round(e.score, 6), "peak_score": round(e.score, 6), "end_frame": None, "frames": None,
                 "active": True, "frame": r.frame.index}  # "frame": the one shown and reviewed
        if len(self.alarms) == self.alarms.maxlen:
            gone = self.alarms[0]
            self.thumbs.pop(gone["id"], None)
            self._open.pop((gone["source"], gone["start_frame"]), None)
        self.alarms.append(alarm)
        self._open[(e.source, start)] = alarm
        self.alarm_frames[alarm["id"]] = r
        while len(self.alarm_frames) > REVIEW_ALARMS:
            self.alarm_frames.pop(min(self.alarm_frames))
        self.pending_thumbs.append((alarm["id"], r))

    def add_event(self, e) -> None:
        """An alarm end closes its entry; other events (corrupt inputs) are counted by the metrics."""
        if getattr(e, "kind", None) != "alarm_end":
            return
        with self.lock:
            alarm = self._open.pop((e.source, e.start_frame), None)
            if alarm is not None:
                alarm.update(end_frame=e.frame, frames=e.frames, peak_score=round(float(e.peak_score), 6), active=False)

    # -- encoder thread -------------------------------------------------------------------------
    def _watched(self, view: SourceView) -> bool:
        return view.streams > 0 or time.monotonic() - view.polled_at < WATCH_GRACE_S

    def to_encode(self) -> List[Tuple[str, int, object]]:
        """(label, version, FrameResult) of each watched source whose JPEG is stale."""
        with self.lock:
            return [(v.label, v.version, v.latest) for v in self.sources.values()
                    if v.latest is not None and v.version != v.jpeg_version and self._watched(v)]

    def put_jpeg(self, label: str, version: int, frame_index: int, jpeg: bytes) -> None:
        with self.lock:
            view = self.sources[label]
            view.jpeg, view.jpeg_version, view.jpeg_frame = jpeg, version, frame_index

    def take_thumbnails(self) -> list:
        with self.lock:
            items = list(self.pending_thumbs)
            self.pending_thumbs.clear()
            return items

    def put_thumbnail(self, alarm_id: int, jpeg: bytes) -> None:
        with self.lock:
            if any(a["id"] == alarm_id for a in self.alarms):  # not pruned meanwhile
                self.thumbs[alarm_id] = jpeg

    # -- server threads -------------------------------------------------------------------------
    def watch(self, label: str, delta: int) -> None:
        """An MJPEG response opens (+1) or closes (-1) on ``label``."""
        with self.lock:
            view = self._source(label)
            view.streams = max(0, view.streams + delta)
        self.wake.set()

    def poll(self, label: str, mark: bool = True) -> Tuple[Optional[bytes], Optional[int], int]:
        """(JPEG, frame index, version); ``mark``: a polled request, which keeps the source watched
        for ``WATCH_GRACE_S`` (an MJPEG response counts through ``watch`` instead)."""
        with self.lock:
            view = self._source(label)
            if mark:
                view.polled_at = time.monotonic()
            out = (view.jpeg, view.jpeg_frame, view.jpeg_version)
        if mark:
            self.wake.set()
        return out

    def can_add(self) -> bool:
        with self.lock:
            return len(self.sources) < MAX_SOURCES

    def labels(self) -> List[str]:
        with self.lock:
            return list(self.sources)

    def scores(self, label: str, after: Optional[int] = None) -> List[dict]:
        with self.lock:
            view = self.sources.get(label)
            points = list(view.scores) if view is not None else []
        if after is not None:
            points = [p for p in points if p["frame"] > after]
        return points

    def score_range(self) -> Optional[Tuple[float, float]]:
        """(lowest, highest) score of the recent frames of every source; None before the first."""
        with self.lock:
            scores = [p["score"] for v in self.sources.values() for p in v.scores]
        return (min(scores), max(scores)) if scores else None

    def alarm_list(self, label: Optional[str] = None) -> List[dict]:
        with self.lock:
            items = [dict(a, thumbnail=a["id"] in self.thumbs, reviewable=a["id"] in self.alarm_frames,
                          review=self.reviews.get((a["source"], a["frame"])))
                     for a in reversed(self.alarms)]
        return [a for a in items if label is None or a["source"] == label]

    # -- reviews (server threads) ---------------------------------------------------------------
    def frame_for_review(self, label: str, index: int):
        """The FrameResult of frame ``index`` of ``label`` while the view still holds it, else None."""
        with self.lock:
            view = self.sources.get(label)
            for r in (view.recent if view is not None else ()):
                if r.frame.index == index:
                    return r
            for r in self.alarm_frames.values():
                if r.source == label and r.frame.index == index:
                    return r
        return None

    def review_of(self, label: str, index: int) -> Optional[dict]:
        with self.lock:
            return self.reviews.get((label, index))

    def put_review(self, record: dict) -> None:
        with self.lock:
            self.reviews[(record["source"], record["frame"])] = record

    def drop_review(self, review_id: str) -> Optional[dict]:
        with self.lock:
            key = next((k for k, r in self.reviews.items() if r["id"] == review_id), None)
            return self.reviews.pop(key) if key is not None else None

    def review_list(self) -> List[dict]:
        """This run's reviews (undone ones removed), newest first."""
        with self.lock:
            items = list(self.reviews.values())
        return sorted(items, key=lambda r: r["reviewed"], reverse=True)

    def thumbnail(self, alarm_id: int) -> Optional[bytes]:
        with self.lock:
            return self.thumbs.get(alarm_id)
