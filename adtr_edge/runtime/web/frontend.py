"""The sink ``stream --http/--metrics`` adds: it feeds the live state and the metrics from the
sink thread (references and counters only) and owns the encoder and the HTTP servers."""

from __future__ import annotations

import base64
import logging
import sys
import threading
from pathlib import Path
from typing import List, Optional

from ...errors import AdtrError
from ...folder import read_model_folder, save_threshold
from ..review import ReviewFolder, as_mask, model_digest
from ..sinks import Sink
from .app import make_app
from .encoder import Encoder
from .metrics import StreamMetrics
from .server import HttpServer
from .state import LiveState

log = logging.getLogger(__name__)


class Frontend(Sink):
    """Web view (``http``: HOST:PORT) and/or a metrics-only server (``metrics``: HOST:PORT)."""

    name = "web"

    def __init__(self, model_dir: Path, *, http: Optional[str] = None, metrics: Optional[str] = None,
                 token: Optional[str] = None, max_fps: float = 10.0, announce: bool = True,
                 review_dir: Optional[Path] = None):
        if token is not None and not token.strip():
            raise AdtrError("--http-token: empty; give a secret string or leave the option out")
        # Checked before any server binds: an unwritable folder is one line at start, not a
        # failed review hours later.
        self.reviews = ReviewFolder(review_dir) if review_dir is not None else None
        self._describe(Path(model_dir))
        self._review_lock = threading.Lock()  # one review of a frame at a time (a double click)
        self.token = token
        self.state = LiveState()
        self.metrics = StreamMetrics()
        self.pipeline = None
        self.closing = False
        self.last_saved: Optional[dict] = None  # the manifest's threshold_history keeps the rest
        self.encoder: Optional[Encoder] = None
        self.servers: List[HttpServer] = []
        try:
            if http is not None:
                self.encoder = Encoder(self.state, max_fps=max_fps)
                self.servers.append(HttpServer(make_app(self, token), http, "--http"))
            if metrics is not None:
                self.servers.append(HttpServer(make_app(self, token, page=False), metrics, "--metrics"))
        except BaseException:
            self.close()
            raise
        if announce:
            for server, what in zip(self.servers, [w for w, a in (("web view", http), ("metrics", metrics)) if a is not None]):
                path = "metrics" if what == "metrics" else ""
                note = " (token required)" if token else ""
                print(f"{what}: {server.url}{path}{note}", file=sys.stderr, flush=True)

    @property
    def http(self) -> Optional[HttpServer]:
        return self.servers[0] if self.encoder is not None and self.servers else None

    # -- sink (the pipeline's sink thread: no encoding, no waiting) --------------------------------
    def attach(self, pipeline) -> None:
        self.pipeline = pipeline
        self.metrics.attach(pipeline)

    def on_frame(self, r) -> None:
        if self.encoder is not None:
            self.state.add_frame(r)
        self.metrics.on_frame(r)

    def on_alarm(self, event) -> None:
        if self.encoder is not None:
            self.state.add_event(event)

    def close(self) -> None:
        self.closing = True  # open MJPEG responses end, so the servers stop at once
        for server in self.servers:
            server.close()
        self.servers = []
        if self.encoder is not None:
            self.encoder.close()

    # -- for the routes (server threads) -------------------------------------------------------
    def source_labels(self) -> List[str]:
        """The pipeline's sources (the keys of ``status()["sources"]``); before it starts, those clients asked for."""
        if self.pipeline is not None:
            return list(self.pipeline.sources)
        return self.state.labels()

    def _describe(self, model_dir: Path) -> None:
        """What the page shows of the running model (and where a saved threshold goes)."""
        self.model_dir = model_dir
        folder = read_model_folder(model_dir)
        model_cfg = folder.meta.raw.get("model", {}) if folder.meta is not None else {}
        self.model = {"path": str(folder.path), "name": folder.path.name, "kind": folder.kind,
                      "backbone": model_cfg.get("backbone"), "input_size": list(folder.meta.input_size) if folder.meta else None,
                      "digest": model_digest(model_dir)["digest"]}
        self.last_saved = None  # a threshold saved into the previous folder says nothing of this one

    def _follow_swaps(self) -> None:
        """The pipeline may have switched models (the web view, a watched path): show the new one."""
        running = self.pipeline.model.get("path") if self.pipeline is not None else None
        if running and running != str(self.model_dir):
            self._describe(Path(running))

    def _detector(self):
        if self.pipeline is None:
            raise AdtrError("the stream has not started yet")
        return self.pipeline.detector

    def swap_model(self, path: str) -> dict:
        """Load ``path`` beside the running model and switch between two frames (``Pipeline.swap_model``)."""
        if self.pipeline is None:
            raise AdtrError("the stream has not started yet")
        record = self.pipeline.swap_model(path)
        self._follow_swaps()
        return record

    def set_threshold(self, value: Optional[float]) -> None:
        self._detector().set_threshold(value)
        log.warning("threshold set to %s from the web view", self._detector().thresholds.threshold)

    def save_threshold(self) -> dict:
        self._follow_swaps()
        value = self._detector().thresholds.threshold
        entry = save_threshold(self.model_dir, value, by="adtr-edge stream web view")
        self.last_saved = entry
        log.warning("threshold %s saved to %s (was %s)", value, self.model_dir, entry["threshold"])
        return entry

    # -- reviews (server threads, off the event loop: they write files) ------------------------
    def _review_folder(self) -> ReviewFolder:
        if self.reviews is None:
            raise AdtrError("reviews need a review folder: start the stream with --review-dir DIR")
        return self.reviews

    def review(self, source: str, frame: int, verdict: str, label: str = "defect", mask: Optional[str] = None,
               client: Optional[str] = None) -> dict:
        """Write the raw frame ``frame`` of ``source`` (still in the view's buffer) to the review
        folder with ``verdict``; ``mask``: the painted region as a PNG data URL of the frame's size."""
        folder = self._review_folder()
        r = self.state.frame_for_review(source, frame)
        if r is None:
            raise LookupError(f"frame {frame} of {source!r} has left the view's buffer (it keeps the newest frames of "
                              "each source and the frames of the newest alarms); review a newer one")
        painted = _decode_mask(mask, r.frame.image.shape) if mask is not None else None
        with self._review_lock:
            if self.state.review_of(source, frame) is not None:
                raise AdtrError(f"frame {frame} of {source!r} is already reviewed; undo that review first")
            d = r.detection
            record = folder.add(r.frame.image, verdict, label=label, mask=painted, source=source, frame=frame,
                                name=r.frame.name, captured=r.frame.timestamp, score=d.score,
                                threshold=d.thresholds.threshold, model=self._model_of(r),
                                reviewer={"by": "adtr-edge stream web view", "client": client})
            self.state.put_review(record)
        log.info("review: frame %d of %s marked %s -> %s", frame, source, verdict, record["image"])
        return record

    def _model_of(self, r) -> dict:
        """{"path", "digest"} of the model that scored ``r`` (the stream may have swapped since)."""
        if self.pipeline is not None and r.model is not None:
            for m in [self.pipeline.model] + [s["from"] for s in self.pipeline.swaps]:
                if m.get("digest") == r.model:
                    return dict(m)
        return {"path": self.model["path"], "digest": self.model["digest"]}

    def undo_review(self, review_id: str) -> dict:
        folder = self._review_folder()
        with self._review_lock:
            record = folder.remove(review_id)
            self.state.drop_review(review_id)
        log.info("review %s undone", review_id)
        return record

    def status(self) -> dict:
        self._follow_swaps()
        s = self.pipeline.status() if self.pipeline is not None else {"running": False, "sources": {}, "errors": []}
        exported = None
        span = [0.0, 1.0]
        if self.pipeline is not None:
            det = self.pipeline.detector
            t = det.meta.thresholds
            exported = self.last_saved["new_threshold"] if self.last_saved else t.threshold  # the folder's value now
            lo, hi = min(t.score_min, t.threshold, det.thresholds.threshold), max(t.score_max, t.threshold, det.thresholds.threshold)
            # score_min/score_max span the calibration's normal scores only; defects often score
            # many times higher, and a slider that stops below them cannot move the threshold
            # past a false alarm: the range also covers every score the view holds.
            seen = self.state.score_range()
            if seen is not None:
                lo, hi = min(lo, seen[0]), max(hi, seen[1])
            span = [lo, hi if hi > lo else lo + 1.0]
        s["model"] = self.model
        s["view"] = {"token": bool(self.token), "folder_threshold": exported, "threshold_range": span,
                     "review_dir": str(self.reviews.path) if self.reviews is not None else None,
                     "saved": self.last_saved, "labels": self.source_labels(),
                     "encoded": self.encoder.encoded if self.encoder is not None else 0}
        return s


def _decode_mask(data_url: str, frame_shape):
    """A canvas export (``data:image/png;base64,...``, or bare base64) as a 0/255 mask of the
    frame's size; anything else is one line."""
    import cv2
    import numpy as np

    if not isinstance(data_url, str):
        raise AdtrError("mask: expected a PNG data URL (canvas.toDataURL('image/png'))")
    payload = data_url.split(",", 1)[1] if data_url.startswith("data:") else data_url
    try:
        raw = base64.b64decode(payload, validate=True)
    except ValueError:
        raise AdtrError("mask: not base64 (expected a PNG data URL)") from None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED) if raw else None
    if image is None:
        raise AdtrError("mask: not a PNG image")
    return as_mask(image, frame_shape)
