"""The embedding API: load a model folder once, call it on frames.

OpenCV loop::

    import cv2
    from adtr_edge import Detector

    with Detector.load("export/", backend="auto") as det:
        cap = cv2.VideoCapture(0)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            d = det(frame)                       # one Detection
            if d.label:
                print(f"anomaly {d.normalized_score:.2f}", d.timings)
            heat = d.map_for_frame()             # float32 map at the frame's size

GStreamer appsink loop (OpenCV built with GStreamer, e.g. JetPack's)::

    pipe = ("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=1 max-buffers=1 sync=false")
    cap = cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER)
    with Detector.load("engines/orin-fp16/") as det:
        while cap.grab():
            ok, frame = cap.retrieve()
            d = det(frame)

Batches: ``det([f1, f2])`` or ``det(np_batch_nhwc)`` return a list of Detections.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import AdtrError
from ..metadata import ModelMeta
from ..postprocessing import Thresholds, check_threshold, label, map_to_frame, normalize_map, normalize_score
from ..preprocessing import prepare_batch
from .backends.base import Backend


@dataclass
class Detection:
    """The result for one frame.

    ``anomaly_map`` is the raw map at the model's input size; ``timings`` (milliseconds) are those of
    the batch the frame ran in (``batch_size`` frames), keys preprocess/backbone/transformer/postprocess.
    """

    score: float
    normalized_score: float
    label: bool
    anomaly_map: np.ndarray
    frame_shape: tuple[int, ...]
    thresholds: Thresholds
    timings: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1

    def map_for_frame(self) -> np.ndarray:
        """The raw anomaly map resized (bilinear) onto the original frame."""
        return map_to_frame(self.anomaly_map, self.frame_shape)

    def normalized_map(self) -> np.ndarray:
        """The map on the normalised scale (0.5 = threshold), at the model size."""
        return normalize_map(self.anomaly_map, self.thresholds)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "normalized_score": self.normalized_score,
            "label": self.label,
            "timings_ms": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _as_frame_list(frames) -> tuple[list[np.ndarray] | np.ndarray, bool]:
    """(frames, single?) from one frame, a list of frames or an (N,H,W,C) array."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 4:
            return frames, False
        if frames.ndim in (2, 3):
            return [frames], True
        raise AdtrError(f"frame array of shape {frames.shape}: expected (H,W), (H,W,C) or (N,H,W,C)")
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise AdtrError("empty batch: no frames given")
        return list(frames), False
    raise AdtrError(f"expected a numpy frame or a list of frames, got {type(frames).__name__}")


class Detector:
    """Preprocess -> backend (backbone, transformer) -> postprocess, for frames of any size."""

    def __init__(self, backend: Backend, threshold: float | None = None):
        self.backend = backend
        self.meta: ModelMeta = backend.meta
        self.spec = self.meta.preprocess
        self.thresholds: Thresholds = self.meta.thresholds.with_threshold(threshold)
        backend.activate()

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", threshold: float | None = None, **backend_options) -> "Detector":
        """Open a model folder (ONNX export or TensorRT engine folder) with the chosen backend.

        ``backend="triton", server="host:8001"`` runs it on a Triton server serving the folder's
        ``adtr-edge export-triton`` repository (checked against the folder on connecting)."""
        from .loading import load_backend

        check_threshold(threshold)  # before the (slow) backend load
        return cls(load_backend(path, backend, **backend_options), threshold=threshold)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def set_threshold(self, threshold: float | None) -> None:
        """Override the raw-score threshold (None restores the exported one)."""
        self.thresholds = self.meta.thresholds.with_threshold(threshold)

    # -- inference -------------------------------------------------------------------------
    def __call__(self, frames) -> Detection | list[Detection]:
        batch, single = _as_frame_list(frames)
        (detections,) = list(self.detect_batches([batch]))
        return detections[0] if single else detections

    def detect_batches(self, batches: Iterable[Sequence[np.ndarray] | np.ndarray]) -> Iterator[list[Detection]]:
        """Detections for a stream of batches, in order, through ``backend.infer_many`` so a backend
        that overlaps stages (TensorRT, two CUDA streams) gets the next batch while one is in flight."""
        pending: deque[tuple[list[tuple[int, ...]], float]] = deque()

        def prepared() -> Iterator[np.ndarray]:
            for frames in batches:
                t0 = time.perf_counter()
                shapes = [tuple(f.shape) for f in frames]
                images = prepare_batch(frames, self.spec)
                pending.append((shapes, (time.perf_counter() - t0) * 1e3))
                yield images

        for result in self.backend.infer_many(prepared()):
            shapes, pre_ms = pending.popleft()
            yield self._postprocess(result.anomaly_map, result.score, shapes, pre_ms, result.timings)

    def _postprocess(self, anomaly_map, score, shapes, pre_ms, stage_ms) -> list[Detection]:
        t0 = time.perf_counter()
        t = self.thresholds
        n = len(shapes)
        if anomaly_map.shape[0] != n or score.shape[0] != n:
            raise AdtrError(f"backend returned {anomaly_map.shape[0]} maps / {score.shape[0]} scores for {n} frames")
        norm = normalize_score(score, t)
        labels = label(score, t)
        maps = anomaly_map.reshape(n, anomaly_map.shape[-2], anomaly_map.shape[-1]).astype(np.float32, copy=False)
        post_ms = (time.perf_counter() - t0) * 1e3
        # Only the stages the backend timed: a remote one (Triton) runs both on the server, and a
        # 0.0 for them would read as free stages in the summary and the metrics.
        timings = {"preprocess": pre_ms, **{k: stage_ms[k] for k in ("backbone", "transformer") if k in stage_ms},
                   "postprocess": post_ms}
        extra = {k: v for k, v in stage_ms.items() if k not in timings}
        timings.update(extra)
        return [
            Detection(
                score=float(score[i]),
                normalized_score=float(norm[i]),
                label=bool(labels[i]),
                anomaly_map=maps[i],
                frame_shape=shapes[i],
                thresholds=t,
                timings=dict(timings),
                batch_size=n,
            )
            for i in range(n)
        ]

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
