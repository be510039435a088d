"""Switching a running stream to another model between two steps (``Pipeline.swap_model``).

The new model folder is loaded beside the running one and checked on the sources' newest frames
(as many per step as the stream carries) on the caller's thread; the inference thread then takes
the request between two steps, with nothing in flight, so no frame is dropped or scored twice. A
broken or unsuitable folder is refused in one line and the running model goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import numpy as np

from ..errors import AdtrError
from .detector import Detector
from .events import ModelEvent
from .multisource import Step

log = logging.getLogger("adtr_edge.runtime.pipeline")  # the stream's log, where users read its swaps


class SwapRequest:
    """A loaded, checked model waiting for the inference thread; ``done`` is set once it is taken."""

    def __init__(self, detector: Detector, model: dict, load_s: float):
        self.detector, self.model, self.load_s = detector, model, load_s
        self.done = threading.Event()
        self.record: Optional[dict] = None


class ModelSwap:
    """The model swap of ``Pipeline`` (a mixin over its detector, sources and output queue)."""

    def swap_model(self, path, timeout: float = 60.0) -> dict:
        """Load the model folder ``path`` beside the running one, check it on the sources' newest
        frames, and have the inference thread switch to it between two steps: no frame dropped or
        scored twice, alarm debounce and counters carried on, a threshold set by hand (``--threshold``,
        the web view) kept, otherwise the new folder's. Safe from any thread but the sink thread
        (it waits for the inference thread, which may wait for the sinks). Returns the swap's record;
        an ``AdtrError`` (one line) leaves the running model in place."""
        if self._load_model is None:
            raise AdtrError("this stream cannot load another model (it was not started from a model folder)")
        with self._swap_lock:
            if getattr(self, "_started", None) is None or self._inference_done.is_set():
                raise AdtrError("the stream is not running; nothing to swap")
            t0 = time.perf_counter()
            try:
                new = self._load_model(str(path))
            except AdtrError as e:
                raise AdtrError(f"model {path} refused, the running model stays: {e}") from None
            try:
                self._check_model(new, path)
                from .review import model_digest

                info = model_digest(path)
            except BaseException:
                new.close()
                raise
            request = SwapRequest(new, info, time.perf_counter() - t0)
            with self._handoff:
                self._swap = request
            deadline = time.monotonic() + timeout
            while not request.done.wait(0.05):
                if self._inference_done.is_set() or time.monotonic() > deadline:
                    with self._handoff:
                        withdrawn = self._swap is request
                        if withdrawn:
                            self._swap = None
                    if withdrawn:  # never taken: ours to close
                        new.close()
                        why = "the stream ended" if self._inference_done.is_set() else f"no frame came in {timeout:.0f} s"
                        raise AdtrError(f"model {path} not swapped in: {why}; the running model stays")
                    request.done.wait(10.0)  # taken meanwhile: the inference thread is switching
                    break
            if request.record is None:
                raise AdtrError(f"model {path}: the swap did not complete; see the log")
            return request.record

    def _check_model(self, new: Detector, path) -> None:
        """The new model takes what this stream's steps carry: as many frames per step, and the
        sources' own frames (a warm-up on the newest of each, which also makes its first real
        frame as fast as the others)."""
        need = sum(f.batch for f in self.merge.feeds)
        if self.merge.max_step is not None:
            need = min(need, self.merge.max_step)
        cap = getattr(new.backend, "max_batch", None)
        if cap is not None and cap < need:
            raise AdtrError(f"model {path} refused, the running model stays: its engines take at most {cap} frames per "
                            f"step, this stream's steps carry up to {need}; rebuild with --max-batch {need}")
        images = list(self._newest.values())
        if not images:
            h, w = new.spec.height, new.spec.width
            images = [np.zeros((h, w, 3), np.uint8)]
        batch = [images[i % len(images)] for i in range(need)]
        try:
            dets = new(batch)
        except Exception as e:
            msg = str(e) if isinstance(e, AdtrError) else f"{e.__class__.__name__}: {e}"
            raise AdtrError(f"model {path} refused, the running model stays: it fails on this stream's frames ({msg})") from None
        if not all(np.isfinite(d.score) for d in dets):
            raise AdtrError(f"model {path} refused, the running model stays: it scores this stream's frames as NaN/inf")

    def _apply_swap(self) -> None:
        """On the inference thread, with nothing in flight: switch detectors, announce it per source
        before the frames the new one scores, close the old one."""
        with self._handoff:
            request, self._swap = self._swap, None
        if request is None:  # withdrawn (timed out) after _batches saw it: the old model goes on
            return
        try:
            self._switch(request, self._carry)
        finally:
            request.done.set()

    def _switch(self, request: "SwapRequest", step: Step) -> None:
        old = self.detector
        new = request.detector
        if old.thresholds.method == "override":  # chosen by hand for this line: it stays
            new.set_threshold(old.thresholds.threshold)
        c = old.backend.counters()
        self._past_backend = {"reconnects": self._past_backend["reconnects"] + c["reconnects"],
                              "gap_s": self._past_backend["gap_s"] + c["gap_s"]}
        before = dict(self.model)
        self.detector, self.model = new, dict(request.model)
        # "at_frames" fills in as each source's first frame on the new model is emitted (a source
        # without a frame in this step gets its model_swap event with its next frame).
        record = {"from": before, "to": self.model, "at_frames": {}, "threshold": new.thresholds.threshold,
                  "load_s": round(request.load_s, 3), "time": time.time(), "frames_before": self.processed}
        self.swaps.append(record)
        self._announce = {name: record for name, st in self.states.items() if st.ended_by is None}
        for feed, frames, _ in step.items:
            if frames and feed.name in self._announce:
                self._announce_swap(feed.name, frames[0].index)
        request.record = record
        log.warning("model swapped: %s -> %s (%s), threshold %s", before.get("digest"), self.model["digest"],
                    self.model["path"], new.thresholds.threshold)
        try:
            old.close()
        except Exception as e:  # the new model runs; an old backend that fails to close is only logged
            log.error("closing the previous model failed: %s", e)

    def _announce_swap(self, name: str, frame: int) -> None:
        """Before ``name``'s frame ``frame``, the first its new model scored: the model_swap event."""
        record = self._announce.pop(name)
        record["at_frames"][name] = frame
        self.out_q.put(([], [ModelEvent("model_swap", name, time.time(), record["from"], record["to"], record["threshold"], frame)]))
