"""What the pipeline keeps per source: its alarm debounce, counters, frame rate and latency."""

from __future__ import annotations

from ..frame_quality import QualityWatch
from .alarms import AlarmTracker
from .events import SourceEvent
from .multisource import Feed
from .stats import FpsMeter, LatencyStats


class SourceState:
    """What the pipeline keeps per source: its debounce, counters, frame rate and latency."""

    def __init__(self, feed: Feed, min_consecutive: int, quality_ranges: dict | None = None):
        self.feed = feed
        self.name = feed.name
        self.source = feed.source
        self.alarms = AlarmTracker(feed.name, min_consecutive)
        self.processed = 0
        self.anomalous = 0
        self.fps = FpsMeter()
        self.latency = LatencyStats()
        self.ended_by: str | None = None  # None while it runs
        # Exposure and focus against the training normals' ranges (``frame_quality``); kept across
        # model swaps: the camera is the same.
        self.quality = QualityWatch(quality_ranges) if quality_ranges else None
        self.camera_changes: list = []  # {"event", "measure", "frame"} of each camera_drift / camera_ok, for the summary

    def camera_events(self, frame) -> list:
        """The camera watch on ``frame``: a ``camera_drift`` / ``camera_ok`` SourceEvent for each measure
        whose recent median this frame takes out of (or back into) the normals' range, recorded for
        the summary; none for a model without the ranges."""
        changes = self.quality.update(frame.image) if self.quality is not None else []
        self.camera_changes += [{"event": kind, "measure": key, "frame": frame.index} for kind, key, _ in changes]
        return [SourceEvent(kind, self.name, key, reason, frame.timestamp, frame.index) for kind, key, reason in changes]

    def counters(self) -> dict:
        c = self.source.counters()
        return {"frames": self.processed, "drops": c["drops"] + self.feed.drops, "corrupt": c["corrupt"],
                "reconnects": c["reconnects"], "error": self.feed.error or c["error"], "live": self.source.live,
                "alarm": self.alarms.active, "anomalous": self.anomalous, "alarms": self.alarms.count,
                "fps": self.fps.current, "ended": self.ended_by,
                # each watched measure: True while the recent frames are outside the normals' range
                "camera_drift": {k: v is not None for k, v in self.quality.out.items()} if self.quality is not None else {}}

    def summary(self, wall_s: float) -> dict:
        c = self.counters()
        return {"source": self.source.label, "live": self.source.live, "frames": self.processed,
                "anomalous": self.anomalous, "drops": c["drops"], "corrupt": c["corrupt"], "reconnects": c["reconnects"],
                "fps": round(self.processed / wall_s, 3) if wall_s > 0 else None, "latency_ms": self.latency.summary(),
                "alarms": self.alarms.count, "alarm_list": list(self.alarms.history),
                "ended_by": self.ended_by, "error": c["error"], "camera": list(self.camera_changes)}
