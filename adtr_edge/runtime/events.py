"""What the stream makes, as the sinks see it: a processed frame, an alarm start/end, and a
source event (an input the source could not read). Made by the pipeline and the sources; written
by the sinks, so both import this module and neither imports the other.
"""

from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..evaluation import visualize
from .detector import Detection
from .sources import Frame


def iso_utc(epoch_s: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2024-05-01T12:00:00.123Z."""
    t = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FrameResult:
    """One processed frame as the sinks see it."""

    frame: Frame
    detection: Detection
    source: str
    alarm: bool = False  # a debounced alarm is active at this frame
    fps: float | None = None  # smoothed current rate, for display
    alarm_events: list = field(default_factory=list)  # AlarmEvents (and camera SourceEvents) this frame caused, sent right after it
    model: Optional[str] = None  # digest of the model that scored it (a running stream can swap models)

    @functools.cached_property
    def event(self) -> dict:
        """The frame as an event (JSON Lines, MQTT frame scores), built once however many sinks send
        it; sinks copy it before adding their own keys."""
        d = self.detection
        event = {
            "event": "frame",
            "time": iso_utc(self.frame.timestamp),
            "source": self.source,
            "frame": self.frame.index,
            "score": round(d.score, 6),
            "normalized_score": round(d.normalized_score, 6),
            "label": d.label,
            "alarm": self.alarm,
            "ms": {k: round(v, 3) for k, v in d.timings.items()},
        }
        if self.frame.name is not None:
            event["name"] = self.frame.name
        if self.model is not None:
            event["model"] = self.model
        return event

    @functools.cached_property
    def overlay(self) -> np.ndarray:
        """Heat-map overlay on the original frame, drawn once however many sinks use it
        (--save-anomalies and --record both want it for an anomalous frame)."""
        return visualize.overlay(self.frame.image, self.detection.anomaly_map, self.detection.thresholds)


@dataclass
class AlarmEvent:
    kind: str  # "alarm_start" | "alarm_end"
    source: str
    frame: int  # frame index where it started / ended
    timestamp: float
    score: float
    normalized_score: float
    start_frame: int | None = None
    frames: int | None = None  # anomalous frames in the alarm (end events)
    peak_score: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"event": self.kind, "time": iso_utc(self.timestamp), "source": self.source, "frame": self.frame,
             "score": round(self.score, 6), "normalized_score": round(self.normalized_score, 6)}
        if self.kind == "alarm_end":
            d.update(start_frame=self.start_frame, frames=self.frames, peak_score=round(float(self.peak_score), 6))
        elif self.start_frame is not None:
            # The start event comes at the run's N-th frame (--min-consecutive N): start_frame names
            # the run's first, the key a receiver matches against the end event's start_frame.
            d["start_frame"] = self.start_frame
        d.update(self.extra)
        return d


@dataclass
class ModelEvent:
    """A running stream switched models (``kind`` "model_swap"): one per source, sent before the
    first frame of that source the new model scored, so the events file shows where it changed."""

    kind: str
    source: str
    timestamp: float
    old: dict  # {"path", "digest"} of the model before
    new: dict  # ... and after
    threshold: float  # the threshold after the swap
    frame: Optional[int] = None  # the first frame of this source the new model scores

    def to_dict(self) -> dict:
        d = {"event": self.kind, "time": iso_utc(self.timestamp), "source": self.source, "from": self.old.get("digest"),
             "to": self.new.get("digest"), "path": self.new.get("path"), "threshold": self.threshold}
        if self.frame is not None:
            d["frame"] = self.frame
        return d


@dataclass
class SourceEvent:
    """An input the source skipped (``kind`` "corrupt": an unreadable image in a folder), so the
    events file accounts for every input, not only the frames that ran."""

    kind: str
    source: str
    name: str  # the file
    reason: str
    timestamp: float
    frame: Optional[int] = None  # index the next good frame gets

    def to_dict(self) -> dict:
        d = {"event": self.kind, "time": iso_utc(self.timestamp), "source": self.source, "name": self.name,
             "reason": self.reason}
        if self.frame is not None:
            d["frame"] = self.frame
        return d
