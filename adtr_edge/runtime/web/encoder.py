"""The encoder thread: the latest overlay of each watched source as a JPEG, at most ``max_fps``
times a second, plus one thumbnail per alarm.

It runs beside the pipeline, not in it: the sink thread only leaves the newest ``FrameResult`` in
``LiveState`` (a reference swap), so when nobody watches nothing is drawn or encoded at all, and
when a browser watches, the cost is one overlay + JPEG of a downscaled frame per encode, in OpenCV
calls that release the GIL.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import cv2
import numpy as np

from ...evaluation import visualize
from .state import LiveState

log = logging.getLogger(__name__)

MAX_WIDTH = 960  # the page shows the overlay at most this wide; larger frames are shrunk first
THUMB_WIDTH = 200
JPEG_QUALITY = 80
NICE = 10  # the encoder thread's nice value (0: as the stream's threads)


def _shrink(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if w <= width:
        return image
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def overlay_for_view(r, width: int = MAX_WIDTH) -> np.ndarray:
    """The heat-map overlay of ``r`` at most ``width`` wide: the preview drawing on the shrunk
    frame (a few times cheaper than the full one), unless another sink already drew the full one."""
    done = r.__dict__.get("overlay")  # FrameResult.overlay is a cached_property: reuse, never force
    if done is not None:
        return _shrink(done, width)
    d = r.detection
    return visualize.preview_overlay(_shrink(r.frame.image, width), d.anomaly_map, d.thresholds)


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def _lower_priority(nice: int) -> None:
    """Linux schedules threads one by one: a higher nice value for this thread only makes a busy
    CPU serve inference and capture first, so the view's frame rate drops before the stream's."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as e:  # not Linux, or not allowed: the view still works
        log.debug("web view encoder keeps its priority (%s)", e)


class Encoder:
    def __init__(self, state: LiveState, max_fps: float = 10.0, nice: int = NICE):
        self.state = state
        self.nice = nice
        self.interval = 1.0 / max_fps
        self.encoded = 0  # JPEGs made (the benchmark and tests read it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="web-encoder", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self.nice:
            _lower_priority(self.nice)
        last = 0.0
        while not self._stop.is_set():
            self.state.wake.wait(0.5)
            self.state.wake.clear()
            if self._stop.is_set():
                return
            wait = last + self.interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):  # rate cap: frames that come faster are skipped
                return
            last = time.monotonic()
            try:
                self._encode_once()
            except Exception:  # a bad frame must not end the view; the stream is unaffected
                log.exception("web view: encoding failed")

    def _encode_once(self) -> None:
        for alarm_id, r in self.state.take_thumbnails():
            self.state.put_thumbnail(alarm_id, encode_jpeg(overlay_for_view(r, THUMB_WIDTH)))
        for label, version, r in self.state.to_encode():
            self.state.put_jpeg(label, version, r.frame.index, encode_jpeg(overlay_for_view(r)))
            self.encoded += 1

    def close(self) -> None:
        self._stop.set()
        self.state.wake.set()
        self._thread.join(timeout=5.0)
