"""Frame sources: cameras, streams, GStreamer pipelines, video files, image folders.

Spellings accepted by ``open_source`` (jetson-inference's URI scheme plus plain forms):

    0, "0"                        camera index (V4L2 / the platform default)
    "csi://0?width=1920&height=1080&fps=30"   Jetson CSI camera (nvarguscamerasrc pipeline)
    "v4l2:///dev/video0"          a V4L2 device
    "rtsp://host/stream"          a network stream (also rtsps://, http(s)://, rtmp://)
    "... ! appsink"               a GStreamer pipeline (anything with '!')
    "file://clip.mp4", "clip.mp4" a video file
    "images/", "images/*.png"     a folder or a glob of images; a single image file

Live sources (camera, CSI, V4L2, stream, GStreamer) read on a capture thread that keeps only the
newest frame: a slow consumer sees fresh frames and the skipped ones are counted as drops. When a
live source fails mid-stream it reconnects with exponential back-off. Files and folders yield every
frame in order; an unreadable image in a folder is logged, counted and skipped.

The capture opener is injectable (``opener(target, api) -> cv2.VideoCapture``-like object with
``isOpened``, ``read``, ``get``, ``release``) so tests can play a camera that fails and comes back.
"""

from __future__ import annotations

import glob
import logging
import threading
from collections import deque
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from ..errors import AdtrError
from ..preprocessing import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger(__name__)

Opener = Callable[[Any, int], Any]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://")
GLOB_CHARS = set("*?[")


@dataclass
class Frame:
    """One captured frame: the BGR image, its index in the source, capture time (epoch seconds)."""

    image: np.ndarray
    index: int
    timestamp: float
    name: str | None = None  # file name for folder sources


@dataclass(frozen=True)
class ReconnectPolicy:
    """Exponential back-off for a live source that stops delivering frames.

    ``max_attempts=None`` retries forever (a camera on a production line); ``read_failures`` is
    how many failed reads in a row count as a lost source.
    """

    initial_delay: float = 0.5
    max_delay: float = 10.0
    factor: float = 2.0
    max_attempts: int | None = 10
    read_failures: int = 3

    def delays(self) -> Iterator[float]:
        delay, attempt = self.initial_delay, 0
        while self.max_attempts is None or attempt < self.max_attempts:
            yield delay
            attempt += 1
            delay = min(delay * self.factor, self.max_delay)


@dataclass(frozen=True)
class SourceSpec:
    """What ``parse_source`` made of the user's spelling."""

    kind: str  # camera | csi | v4l2 | stream | gstreamer | video | images
    target: Any  # what the opener receives (index, URL, pipeline, path) or a list of image paths
    api: int = cv2.CAP_ANY
    label: str = ""

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "csi", "v4l2", "stream", "gstreamer")


def gstreamer_available() -> bool:
    """Whether this OpenCV build has the GStreamer video I/O backend (pip wheels do not)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The nvarguscamerasrc pipeline for a Jetson CSI camera, ending in a BGR appsink that keeps one
    buffer and drops the rest (the newest frame is the one that matters)."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1 sync=false"
    )


def _image_list(spec: str) -> list[Path]:
    if any(c in spec for c in GLOB_CHARS):
        files = sorted(Path(f) for f in glob.glob(spec) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise AdtrError(f"source {spec!r}: the glob matches no image files")
        return files
    files = list_images(spec)
    if not files:
        raise AdtrError(f"source {spec!r}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def parse_source(spec: int | str | Path) -> SourceSpec:
    """Classify a source spelling; raise AdtrError for one that names nothing usable."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        return SourceSpec("camera", index, cv2.CAP_ANY, f"camera {index}")
    s = str(spec).strip()
    if not s:
        raise AdtrError("source: empty (give --camera N or --source S)")
    if "!" in s:
        return SourceSpec("gstreamer", s, cv2.CAP_GSTREAMER, "gstreamer pipeline")
    if s.startswith("csi://"):
        u = urlparse(s)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        try:
            sensor = int(u.netloc or u.path.strip("/") or 0)
            pipe = csi_pipeline(sensor, int(q.get("width", 1280)), int(q.get("height", 720)), int(q.get("fps", 30)))
        except ValueError:
            raise AdtrError(f"source {s!r}: expected csi://N[?width=W&height=H&fps=F] with integers") from None
        return SourceSpec("csi", pipe, cv2.CAP_GSTREAMER, s)
    if s.startswith("v4l2://"):
        device = s[len("v4l2://"):]
        if not device:
            raise AdtrError(f"source {s!r}: expected v4l2:///dev/videoN")
        return SourceSpec("v4l2", device, getattr(cv2, "CAP_V4L2", cv2.CAP_ANY), s)
    if s.startswith(STREAM_SCHEMES):
        return SourceSpec("stream", s, cv2.CAP_ANY, s)
    if s.startswith("file://"):
        s = s[len("file://"):]
    p = Path(s)
    if any(c in s for c in GLOB_CHARS) and not p.exists():
        return SourceSpec("images", _image_list(s), cv2.CAP_ANY, s)
    if p.is_dir():
        return SourceSpec("images", _image_list(s), cv2.CAP_ANY, s)
    if p.is_file():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return SourceSpec("images", [p], cv2.CAP_ANY, s)
        return SourceSpec("video", str(p), cv2.CAP_ANY, s)
    raise AdtrError(f"source not found: {s!r} (not a camera index, URL, pipeline, file, folder or glob)")


def default_opener(target: Any, api: int):
    return cv2.VideoCapture(target, api)


class Source:
    """Common counters and the iteration protocol; subclasses yield ``Frame`` objects."""

    live = False

    def __init__(self, label: str):
        self.label = label
        self.frames = 0  # frames delivered
        self.drops = 0  # live frames replaced by a newer one before anyone took them
        self.corrupt = 0  # unreadable images skipped
        # (name, reason, time, index of the next frame) of each skipped input, taken by the pipeline
        # with take_skipped() so the events file shows them (deque: appended and taken from two threads)
        self.skipped: deque = deque()
        self.reconnects = 0  # successful reopenings of a live source
        self.error: str | None = None  # why the source ended early, if it did
        self.fps: float | None = None  # nominal rate, None when unknown
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        raise TypeError(f"{type(self).__name__} is abstract")  # pragma: no cover

    def stop(self) -> None:
        """Ask the source to end; iteration finishes after at most the current frame."""
        self._stop.set()

    def close(self) -> None:
        self.stop()

    def take_skipped(self) -> list:
        """The skipped inputs recorded since the last call, oldest first."""
        out = []
        while self.skipped:
            out.append(self.skipped.popleft())
        return out

    def counters(self) -> dict:
        return {"frames": self.frames, "drops": self.drops, "corrupt": self.corrupt,
                "reconnects": self.reconnects, "error": self.error}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fps_of(cap) -> float | None:
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    except Exception:
        return None
    # 0 (and NaN) is how OpenCV says "unknown"; absurd values come from broken container headers.
    return fps if 0 < fps < 1000 else None


class ImageFolderSource(Source):
    """Every image of a folder or glob, in name order; unreadable ones are skipped and counted."""

    def __init__(self, files: list[Path], label: str):
        super().__init__(label)
        self.files = list(files)

    def __iter__(self) -> Iterator[Frame]:
        for path in self.files:
            if self._stop.is_set():
                return
            try:
                image = read_image(path)
            except AdtrError as e:
                self.corrupt += 1
                self.skipped.append((str(path), str(e), time.time(), self.frames))
                log.warning("skipping %s", e)
                continue
            yield Frame(image, self.frames, time.time(), str(path))
            self.frames += 1


class VideoFileSource(Source):
    """Every frame of a video file, in order."""

    def __init__(self, path: str, label: str, opener: Opener = default_opener, api: int = cv2.CAP_ANY):
        super().__init__(label)
        self.cap = opener(path, api)
        if self.cap is None or not self.cap.isOpened():
            raise AdtrError(f"cannot open video file {path} (unsupported codec or not a video)")
        self.fps = _fps_of(self.cap)
        self._iterating = False

    def __iter__(self) -> Iterator[Frame]:
        self._iterating = True
        try:
            while not self._stop.is_set():
                ok, image = self.cap.read()
                if not ok or image is None:
                    return
                yield Frame(image, self.frames, time.time())
                self.frames += 1
        finally:
            self.cap.release()

    def close(self) -> None:
        super().close()
        # A running iterator releases the capture itself: releasing under a read() in another
        # thread is undefined behaviour in some OpenCV backends.
        if not self._iterating:
            self.cap.release()


class LiveSource(Source):
    """A camera or stream read on its own thread; only the newest frame is kept.

    The first open happens in the constructor so a source that never opens is an immediate
    AdtrError; a source lost later is reopened with back-off on the capture thread.
    """

    live = True

    def __init__(self, spec: SourceSpec, opener: Opener = default_opener, reconnect: ReconnectPolicy | None = None):
        super().__init__(spec.label)
        self.spec = spec
        self.opener = opener
        self.policy = reconnect or ReconnectPolicy()
        self.cap = self._open()
        if self.cap is None:
            raise AdtrError(f"cannot open source {spec.label!r} ({self._hint()})")
        self.fps = _fps_of(self.cap)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._captured = 0
        self._thread = threading.Thread(target=self._capture_loop, name=f"capture[{spec.label}]", daemon=True)
        self._thread.start()

    def _hint(self) -> str:
        if self.spec.kind == "csi":
            return "is nvargus-daemon running and the camera free? 'Failed to create CaptureSession' needs a daemon restart"
        if self.spec.kind == "camera":
            return "no such camera, or it is in use"
        return "unreachable or unsupported by this OpenCV build"

    def _open(self):
        try:
            cap = self.opener(self.spec.target, self.spec.api)
        except Exception as e:  # OpenCV raises cv2.error for some backends instead of returning closed
            log.warning("opening %s failed: %s", self.spec.label, e)
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _reconnect(self) -> bool:
        for delay in self.policy.delays():
            if self._stop.wait(delay):
                return False
            cap = self._open()
            if cap is not None:
                self.cap = cap
                self.reconnects += 1
                log.warning("reconnected to %s", self.spec.label)
                return True
            log.warning("%s: still unavailable, next try in up to %.1fs", self.spec.label, min(delay * self.policy.factor, self.policy.max_delay))
        return False

    def _capture_loop(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                ok, image = self.cap.read()
                if ok and image is not None:
                    failures = 0
                    self._publish(image)
                    continue
                failures += 1
                if failures < self.policy.read_failures:
                    continue
                log.warning("%s: lost after %d failed reads; reconnecting", self.spec.label, failures)
                self.cap.release()
                failures = 0
                if not self._reconnect():
                    if not self._stop.is_set():
                        self.error = f"source {self.spec.label!r} lost and did not come back"
                    return
        finally:
            self.cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _publish(self, image: np.ndarray) -> None:
        with self._cond:
            if self._latest is not None:
                self.drops += 1
            self._latest = Frame(image, self._captured, time.time())
            self._captured += 1
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._cond:
                while self._latest is None and not self._ended and not self._stop.is_set():
                    self._cond.wait(0.1)
                frame, self._latest = self._latest, None
            if frame is None:  # ended or stopped with nothing pending
                return
            self.frames += 1
            yield frame

    def close(self) -> None:
        super().close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


def open_source(
    spec: int | str | Path,
    *,
    opener: Opener | None = None,
    reconnect: ReconnectPolicy | None = None,
) -> Source:
    """Open a source from its spelling (see the module docstring)."""
    parsed = parse_source(spec)
    if parsed.kind == "images":
        return ImageFolderSource(parsed.target, parsed.label)
    if parsed.api == cv2.CAP_GSTREAMER and opener is None and not gstreamer_available():
        raise AdtrError(
            f"source {parsed.label!r} needs OpenCV with GStreamer, and this build has none "
            "(cv2.getBuildInformation(): 'GStreamer: NO'; pip wheels lack it, JetPack's OpenCV has it)"
        )
    if parsed.kind == "video":
        return VideoFileSource(parsed.target, parsed.label, opener or default_opener, parsed.api)
    return LiveSource(parsed, opener or default_opener, reconnect)
