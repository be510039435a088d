"""The contract every inference backend follows (Polygraphy's runner idea: activate / infer / deactivate).

A backend runs the two graphs (or engines) of one exported model:

    images uint8 (N, H, W, 3) BGR  --backbone-->  features float32 (N, C, h, w)
    features                       --transformer-> anomaly_map float32 (N, 1, H, W), score float32 (N,)

Host preprocessing (resize) and post-processing (normalised score, label) are not the backend's
job: ``adtr_edge.preprocessing`` and ``adtr_edge.postprocessing`` do them once for every backend.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from ...metadata import ModelMeta


@dataclass
class InferResult:
    """Raw outputs of one batch plus per-stage times in milliseconds.

    ``timings`` has "backbone" and "transformer" (host wall time of each stage, including copies)
    where the backend runs the stages itself; backends that can measure device compute add
    "backbone_gpu" / "transformer_gpu"; a remote backend reports its round trip instead ("triton").
    """

    anomaly_map: np.ndarray  # (N, 1, H, W) float32
    score: np.ndarray  # (N,) float32
    timings: dict[str, float] = field(default_factory=dict)


class Backend(abc.ABC):
    """Base class: subclasses implement ``_activate``, ``_deactivate``, ``_run_backbone``, ``_run_transformer``."""

    name: str = "base"

    def __init__(self, meta: ModelMeta):
        self.meta = meta
        self.is_active = False

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> "Backend":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- inference -------------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> InferResult:
        """Run both stages on one uint8 NHWC BGR batch at the model's input size."""
        if not self.is_active:
            self.activate()
        t0 = time.perf_counter()
        features = self._run_backbone(images)
        t1 = time.perf_counter()
        anomaly_map, score = self._run_transformer(features)
        t2 = time.perf_counter()
        return InferResult(anomaly_map, score, {"backbone": (t1 - t0) * 1e3, "transformer": (t2 - t1) * 1e3})

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[InferResult]:
        """Results for a sequence of batches, in order. Sequential here; backends with two
        device streams override it to overlap the backbone of batch t+1 with the transformer of t."""
        for images in batches:
            yield self.infer(images)

    def counters(self) -> dict:
        """Connection health for the summary: ``reconnects`` and ``gap_s`` (seconds without a
        server). In-process backends have no connection: zeros."""
        return {"reconnects": 0, "gap_s": 0.0}

    def take_gaps(self) -> list:
        """Outages since the last call, each ``{"start": epoch_s, "seconds", "reason", "server",
        "recovered"}`` (a remote backend's lost server; ``recovered`` False: it never came back and
        the stream ended); in-process backends have none."""
        return []

    def run_backbone(self, images: np.ndarray) -> np.ndarray:
        """Backbone stage alone (INT8 calibration of the transformer, benchmarks)."""
        if not self.is_active:
            self.activate()
        return self._run_backbone(images)

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _run_backbone(self, images: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _run_transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
