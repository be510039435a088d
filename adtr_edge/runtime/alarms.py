"""Debounced alarms of one source: an alarm starts after N anomalous frames in a row and ends at
the next normal frame. A many-camera stream keeps one tracker per source, so one camera's run of
anomalous frames never starts or ends another camera's alarm."""

from __future__ import annotations

from collections import deque

from ..errors import AdtrError
from .detector import Detection
from .events import AlarmEvent
from .sources import Frame

MAX_ALARM_HISTORY = 1000  # alarms kept for the summary; the count covers all


class AlarmTracker:
    """Debounced alarms: one starts when ``min_consecutive`` frames in a row are anomalous and
    ends at the next normal frame (or the end of the stream)."""

    def __init__(self, source: str, min_consecutive: int = 1):
        if min_consecutive < 1:
            raise AdtrError(f"--min-consecutive must be >= 1, got {min_consecutive}")
        self.source = source
        self.min_consecutive = min_consecutive
        self.active = False
        self.count = 0
        self.history: deque[dict] = deque(maxlen=MAX_ALARM_HISTORY)
        self._run: list[tuple[Frame, Detection]] = []  # the current anomalous run (first N only)
        self._run_len = 0
        self._start: tuple[Frame, Detection] | None = None
        self._peak = 0.0
        self._last: tuple[Frame, Detection] | None = None

    def update(self, frame: Frame, det: Detection) -> list[AlarmEvent]:
        self._last = (frame, det)
        if not det.label:
            events = self._end(frame, det) if self.active else []
            self._run_len = 0
            return events
        if self._run_len == 0:
            self._start = (frame, det)
            self._peak = det.score
        self._run_len += 1
        self._peak = max(self._peak, det.score)
        if not self.active and self._run_len >= self.min_consecutive:
            self.active = True
            self.count += 1
            return [AlarmEvent("alarm_start", self.source, frame.index, frame.timestamp, det.score, det.normalized_score,
                               start_frame=self._start[0].index)]
        return []

    def _end(self, frame: Frame, det: Detection, reason: str | None = None) -> list[AlarmEvent]:
        self.active = False
        start = self._start[0].index
        event = AlarmEvent("alarm_end", self.source, frame.index, frame.timestamp, det.score, det.normalized_score,
                           start_frame=start, frames=self._run_len, peak_score=self._peak,
                           extra={"reason": reason} if reason else {})
        self.history.append({"start_frame": start, "end_frame": frame.index, "frames": self._run_len,
                             "peak_score": round(float(self._peak), 6)})
        return [event]

    def finish(self, reason: str = "stream end") -> list[AlarmEvent]:
        """Close an alarm still active when the stream (or this source) ends."""
        if not self.active or self._last is None:
            return []
        frame, det = self._last
        return self._end(frame, det, reason=reason)
