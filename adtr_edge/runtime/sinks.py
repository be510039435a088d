"""Where results go: JSON Lines events, saved anomalous frames, a recording, a live window.

Every sink gets ``attach`` once before the first frame (the running pipeline, for sinks that show
its health or change its detector's threshold), ``on_frame`` for each processed frame, ``on_alarm``
for the other events (debounced alarm starts and ends, a ``corrupt`` input the source skipped;
``adtr_edge.runtime.events``), and ``close`` exactly once (also after Ctrl-C), which flushes what
it holds. ``summary`` may add keys to the stream's summary and live status (delivery counts).
Sinks run on the pipeline's sink thread behind a bounded queue, so a sink that waits
(network, a browser) must hand work to its own thread instead of waiting there: a slow sink would
otherwise slow inference.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, TextIO

import cv2
import numpy as np

from ..evaluation import visualize
from ..errors import AdtrError
from ..fileio import write_bytes_atomic
from .events import AlarmEvent, FrameResult, SourceEvent

log = logging.getLogger(__name__)


class Sink:
    """Base: ignore everything."""

    def attach(self, pipeline) -> None:
        """Called once by ``Pipeline.run`` before any frame; ``pipeline.status()`` is its live health."""

    def on_frame(self, result: FrameResult) -> None:
        pass

    def on_alarm(self, event: AlarmEvent | SourceEvent) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        """Keys this sink adds to the summary and to ``Pipeline.status()`` (read from any thread);
        a key several sinks add with dict values is merged one level deep (``{"delivery": {...}}``)."""
        return {}


def merge_sink_summaries(out: dict, sinks) -> dict:
    """Add each sink's ``summary()`` to ``out`` (see ``Sink.summary``); a failing hook is skipped."""
    for sink in sinks:
        try:
            extra = sink.summary()
        except Exception as e:
            log.warning("%s.summary failed: %s", type(sink).__name__, e)
            continue
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


class JsonlSink(Sink):
    """One JSON object per line to stdout ("-") or a file, flushed per line so a tail -f or a
    crash never sees half an event."""

    def __init__(self, target: str | os.PathLike | TextIO = "-"):
        if hasattr(target, "write"):
            self.stream, self.owned = target, False
        elif str(target) == "-":
            self.stream, self.owned = sys.stdout, False
        else:
            p = Path(target)
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                self.stream = open(p, "w", encoding="utf-8")
            except OSError as e:
                raise AdtrError(f"--events {p}: cannot open for writing ({e.strerror})") from None
            self.owned = True

    def _write(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.stream.flush()

    def on_frame(self, result: FrameResult) -> None:
        self._write(result.event)

    def on_alarm(self, event: AlarmEvent | SourceEvent) -> None:
        self._write(event.to_dict())

    def close(self) -> None:
        if self.owned:
            self.stream.close()
        else:
            self.stream.flush()


def _encode_png(image: np.ndarray, what: str) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise AdtrError(f"cannot encode {what} as PNG")
    return buf.tobytes()


class AnomalySaver(Sink):
    """For each anomalous frame: ``<stem>_frame.png`` and ``<stem>_overlay.png`` in ``folder``,
    written atomically (a reader polling the folder never sees a partial PNG)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdtrError(f"--save-anomalies {self.folder}: cannot create folder ({e.strerror})") from None
        self.saved = 0

    def on_frame(self, r: FrameResult) -> None:
        if not r.detection.label:
            return
        stem = f"{r.frame.index:08d}"
        if r.frame.name:
            stem += "_" + Path(r.frame.name).stem
        write_bytes_atomic(self.folder / f"{stem}_frame.png", _encode_png(r.frame.image, "frame"))
        write_bytes_atomic(self.folder / f"{stem}_overlay.png", _encode_png(r.overlay, "overlay"))
        self.saved += 1


class VideoRecorder(Sink):
    """Overlay video of every frame. Written under a temporary name and renamed on close, so the
    final file is always a finished, playable recording."""

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}

    def __init__(self, path: str | os.PathLike, fps: float | None, opener=cv2.VideoWriter):
        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise AdtrError(f"--record {self.path}: use one of {sorted(self.FOURCC)}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdtrError(f"--record {self.path}: cannot create folder ({e.strerror})") from None
        # CAP_PROP_FPS of 0 means "unknown": record at 10 FPS rather than failing.
        self.fps = float(fps) if fps and fps > 0 else 10.0
        self.tmp = self.path.with_name(f".tmp-{self.path.stem}-{os.getpid()}{self.path.suffix}")
        # At start, not at the end of a long stream: the folder must take the temporary file and
        # the final name (a read-only mount, a name that is a folder).
        if self.path.is_dir():
            raise AdtrError(f"--record {self.path}: is a folder; give a file name such as {self.path / 'overlay.mp4'}")
        try:
            with open(self.tmp, "wb"):
                pass
            self.tmp.unlink()
        except OSError as e:
            raise AdtrError(f"--record {self.path}: cannot write there ({e.strerror})") from None
        self.opener = opener
        self.writer = None
        self.size: tuple[int, int] | None = None
        self.written = 0

    def on_frame(self, r: FrameResult) -> None:
        image = r.overlay
        if self.writer is None:
            h, w = image.shape[:2]
            self.size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self.writer = self.opener(str(self.tmp), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise AdtrError(f"--record {self.path}: OpenCV cannot write this format here")
        if (image.shape[1], image.shape[0]) != self.size:  # mixed-size folders: fit the first frame
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.written += 1

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if self.written:
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()


class WindowSink(Sink):
    """Three panes (original | heat map | overlay with score and FPS) in an OpenCV window;
    'q' or Esc asks the pipeline to stop."""

    TITLE = "adtr-edge"

    def __init__(self, request_stop: Callable[[], None], title: str = TITLE):
        self.title = title
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise AdtrError(
                "--show needs OpenCV with GUI support (opencv-python-headless has none; use opencv-python or JetPack's OpenCV)"
            ) from None
        self.request_stop = request_stop

    def on_frame(self, r: FrameResult) -> None:
        d = r.detection
        pane = visualize.three_pane(r.frame.image, d.anomaly_map, d.thresholds, d.score, d.normalized_score, d.label, fps=r.fps)
        cv2.imshow(self.title, pane)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.request_stop()

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class PerSource(Sink):
    """One sink per source name (the ``--save-anomalies`` subfolders, ``--record`` files and
    windows of a many-source stream): each frame and event goes to the sink of its source."""

    def __init__(self, sinks: dict[str, Sink]):
        self.sinks = dict(sinks)

    def attach(self, pipeline) -> None:
        for s in self.sinks.values():
            s.attach(pipeline)

    def on_frame(self, result: FrameResult) -> None:
        sink = self.sinks.get(result.source)
        if sink is not None:
            sink.on_frame(result)

    def on_alarm(self, event: AlarmEvent | SourceEvent) -> None:
        sink = self.sinks.get(event.source)
        if sink is not None:
            sink.on_alarm(event)

    def summary(self) -> dict:
        return merge_sink_summaries({}, self.sinks.values())  # what the per-source sinks add, if anything

    def close(self) -> None:
        first = None
        for s in self.sinks.values():  # every one is closed (flushed) even when one fails
            try:
                s.close()
            except Exception as e:
                first = first or e
        if first is not None:
            raise first
