"""The streaming pipeline: capture thread -> inference -> sink thread, joined by bounded queues.

    source --[capture thread]--> in_q (bounded) --[inference, caller's thread]--> out_q (bounded) --[sink thread]--> sinks

Bounded queues keep memory flat over hours: a slow sink slows inference, slow inference backs up
capture, and a live source then drops its stale frames (counted) instead of queueing them.
Inference goes through ``Detector.detect_batches`` -> ``backend.infer_many`` so a backend with two
device streams overlaps the backbone of one batch with the transformer of the previous one.

Stopping (SIGINT/SIGTERM, 'q' in the window, ``--max-frames``, end of a file) always runs the same
path: capture stops, queued frames are processed, every sink is flushed and closed, the summary is
printed and returned.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import AdtrError
from ..fileio import write_json_atomic
from .detector import Detection, Detector
from .events import AlarmEvent, FrameResult, SourceEvent
from .sinks import AnomalySaver, JsonlSink, Sink, VideoRecorder, WindowSink, merge_sink_summaries
from .sources import Frame, Opener, ReconnectPolicy, Source, open_source
from .stats import FpsMeter, StageStats

log = logging.getLogger(__name__)

_END = object()  # queue sentinel
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

    def finish(self) -> list[AlarmEvent]:
        """Close an alarm still active when the stream ends."""
        if not self.active or self._last is None:
            return []
        frame, det = self._last
        return self._end(frame, det, reason="stream end")


class Pipeline:
    """Runs ``detector`` over ``source`` into ``sinks``; ``run()`` returns the summary dict."""

    def __init__(
        self,
        detector: Detector,
        source: Source,
        sinks: Sequence[Sink],
        *,
        batch: int = 1,
        min_consecutive: int = 1,
        max_frames: int | None = None,
        queue_size: int = 4,
    ):
        if batch < 1:
            raise AdtrError(f"--batch must be >= 1, got {batch}")
        if max_frames is not None and max_frames < 1:
            raise AdtrError(f"--max-frames must be >= 1, got {max_frames}")
        if source.live and batch > 1:
            # Waiting for N live frames adds N-1 frames of latency; micro-batching is for files.
            log.info("live source: --batch %d ignored, running batch 1", batch)
            batch = 1
        self.detector = detector
        self.source = source
        self.sinks = list(sinks)
        self.batch = batch
        self.max_frames = max_frames
        self.alarms = AlarmTracker(source.label, min_consecutive)
        # A live source needs no backlog: one queued batch is enough to keep inference busy.
        self.in_q: queue.Queue = queue.Queue(maxsize=1 if source.live else queue_size)
        self.out_q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stats = StageStats()
        self.fps = FpsMeter()
        self.processed = 0
        self.anomalous = 0
        self.stop_reason = "end of source"
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._inference_done = threading.Event()  # capture must not block on a queue nobody reads

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask for a clean stop (safe from signal handlers and other threads)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
        self.source.stop()

    def _put_frames(self, item) -> bool:
        """Capture -> inference; gives up when inference has ended (it drains nothing more)."""
        while not self._inference_done.is_set():
            try:
                self.in_q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # -- threads ---------------------------------------------------------------------------
    def _skipped(self) -> list[SourceEvent]:
        """The source's skipped inputs as ``corrupt`` events (taken in the capture thread, so they
        travel with the batch of the next good frame and reach the sinks in input order)."""
        return [SourceEvent("corrupt", self.source.label, name, reason, ts, index)
                for name, reason, ts, index in self.source.take_skipped()]

    def _capture(self) -> None:
        taken = 0
        pending: list[Frame] = []
        notices: list[SourceEvent] = []
        try:
            for frame in self.source:
                notices += self._skipped()
                pending.append(frame)
                taken += 1
                if len(pending) >= self.batch:
                    if not self._put_frames((pending, notices)):
                        return
                    pending, notices = [], []
                if self.max_frames is not None and taken >= self.max_frames:
                    self.stop("max frames")
                    break
                if self._stop.is_set():
                    break
            notices += self._skipped()
            if pending or notices:
                self._put_frames((pending, notices))
        except AdtrError as e:
            self.errors.append(str(e))
        except Exception as e:  # a bug or an OpenCV failure: report it, still shut down cleanly
            log.exception("capture failed")
            self.errors.append(f"capture failed: {e.__class__.__name__}: {e}")
        finally:
            self._put_frames(_END)

    def _deliver(self) -> None:
        failed: set[int] = set()
        while True:
            item = self.out_q.get()
            if item is _END:
                break
            results, events = item
            for i, sink in enumerate(self.sinks):
                if i in failed:
                    continue
                try:
                    for r in results:
                        sink.on_frame(r)
                        for e in r.alarm_events:
                            sink.on_alarm(e)
                    for e in events:
                        sink.on_alarm(e)
                except Exception as e:
                    # One broken sink (full disk, closed pipe) must not stall the stream or the others.
                    failed.add(i)
                    msg = str(e) if isinstance(e, AdtrError) else f"{type(sink).__name__} failed: {e.__class__.__name__}: {e}"
                    self.errors.append(msg)
                    log.error("%s", msg)
                    self.stop("sink error")

    def _batches(self, frames_in_flight: deque) -> Iterator[list]:
        while True:
            try:
                item = self.in_q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return
            frames, notices = item
            if not frames:  # only skipped inputs (the last files of a folder): nothing to infer
                self.out_q.put(([], notices))
                continue
            frames_in_flight.append(item)
            yield [f.image for f in frames]

    # -- run -------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        self._started = started
        for sink in self.sinks:
            sink.attach(self)
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        deliver = threading.Thread(target=self._deliver, name="sinks", daemon=True)
        deliver.start()
        capture.start()
        in_flight: deque[tuple[list[Frame], list[SourceEvent]]] = deque()
        try:
            for detections in self.detector.detect_batches(self._batches(in_flight)):
                frames, notices = in_flight.popleft()
                results = []
                self.fps.tick(len(frames))
                for frame, det in zip(frames, detections):
                    due = [n for n in notices if n.frame is not None and n.frame <= frame.index]
                    if due:  # inputs skipped just before this frame: in input order in the events
                        if results:
                            self.out_q.put((results, []))
                            results = []
                        self.out_q.put(([], due))
                        notices = notices[len(due):]
                    self.stats.add(det.timings)
                    self.processed += 1
                    self.anomalous += int(det.label)
                    events = self.alarms.update(frame, det)
                    results.append(FrameResult(frame, det, self.source.label, self.alarms.active, self.fps.current, events))
                # The sink thread never dies (it contains sink failures), so this put always returns.
                self.out_q.put((results, notices))  # inputs skipped after the batch's last frame
        except Exception as e:
            self.errors.append(str(e) if isinstance(e, AdtrError) else f"inference failed: {e.__class__.__name__}: {e}")
            if not isinstance(e, AdtrError):
                log.exception("inference failed")
            self.stop("error")
        finally:
            self._inference_done.set()
            self.out_q.put(([], self.alarms.finish()))
            self.out_q.put(_END)
            capture.join(timeout=10.0)
            deliver.join()
            self.source.close()
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as e:
                    self.errors.append(f"closing {type(sink).__name__}: {e}")
        if self.source.error:
            self.errors.append(self.source.error)
            self.stop_reason = "source lost"
        wall = time.perf_counter() - started
        return self.summary(wall)

    def status(self) -> dict:
        """Live health, safe to call from any thread while ``run`` goes on (plain reads of counters
        the pipeline threads update): what a web view or a metrics endpoint shows. ``sources`` maps
        each source's label to its counters, so many-camera pipelines keep one shape."""
        started = getattr(self, "_started", None)
        c = self.source.counters()
        return merge_sink_summaries({
            "backend": self.detector.backend_name,
            "threshold": self.detector.thresholds.threshold,
            "frames": self.processed,
            "anomalous": self.anomalous,
            "alarms": self.alarms.count,
            "fps": self.fps.current,
            "uptime_s": round(time.perf_counter() - started, 3) if started is not None else 0.0,
            "stages_ms": self.stats.summary(),
            "running": started is not None and not self._inference_done.is_set(),
            "sources": {self.source.label: {**c, "live": self.source.live, "alarm": self.alarms.active,
                                            "anomalous": self.anomalous, "alarms": self.alarms.count}},
            "errors": list(self.errors),
        }, self.sinks)

    def summary(self, wall_s: float) -> dict:
        c = self.source.counters()
        return merge_sink_summaries({
            "source": self.source.label,
            "backend": self.detector.backend_name,
            "threshold": self.detector.thresholds.threshold,
            "frames": self.processed,
            "anomalous": self.anomalous,
            "drops": c["drops"],
            "corrupt": c["corrupt"],
            "reconnects": c["reconnects"],
            "wall_s": round(wall_s, 3),
            "fps": round(self.processed / wall_s, 3) if wall_s > 0 else None,
            "stages_ms": self.stats.summary(),
            "alarms": self.alarms.count,
            "alarm_list": list(self.alarms.history),
            "min_consecutive": self.alarms.min_consecutive,
            "stopped_by": self.stop_reason,
            "errors": list(self.errors),
        }, self.sinks)


def format_summary(s: dict) -> str:
    """The summary as a few aligned lines for a terminal."""
    lines = [
        f"source      {s['source']}  (backend {s['backend']}, threshold {s['threshold']:.6g})",
        f"frames      {s['frames']}  anomalous {s['anomalous']}  drops {s['drops']}  corrupt {s['corrupt']}  reconnects {s['reconnects']}",
        f"throughput  {s['fps'] or 0:.2f} FPS over {s['wall_s']:.2f} s  (stopped by {s['stopped_by']})",
        f"alarms      {s['alarms']} (>= {s['min_consecutive']} consecutive anomalous frames)",
        "stage ms    " + "mean / p50 / p95",
    ]
    for name, st in s["stages_ms"].items():
        if st["count"]:
            lines.append(f"  {name:<12}{st['mean']:9.2f} {st['p50']:9.2f} {st['p95']:9.2f}")
    for name, d in s.get("delivery", {}).items():  # the MQTT / webhook sinks (runtime/delivery)
        lines.append(f"delivery    {name}: delivered {d['delivered']}  backlog {d['backlog']}  dropped {d['dropped']}  (spool {d['spool']})")
    for err in s["errors"]:
        lines.append(f"error       {err}")
    return "\n".join(lines)


@contextlib.contextmanager
def stop_on_signals(pipeline: Pipeline):
    """SIGINT/SIGTERM ask the pipeline to stop cleanly; a second SIGINT interrupts at once.
    Signal handlers can only be installed from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, _frame):
        if pipeline._stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning("%s received: stopping (again to abort)", name)
        pipeline.stop(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_stream(
    model_dir: str | Path,
    source: int | str | Path,
    *,
    backend: str = "auto",
    threshold: float | None = None,
    events: str | Path | None = None,
    save_anomalies: str | Path | None = None,
    record: str | Path | None = None,
    show: bool = False,
    min_consecutive: int = 1,
    max_frames: int | None = None,
    batch: int = 1,
    summary_path: str | Path | None = None,
    reconnect: ReconnectPolicy | None = None,
    opener: Opener | None = None,
    backend_options: dict[str, Any] | None = None,
    extra_sinks: Sequence[Sink] = (),
    print_summary: bool = True,
    handle_signals: bool = True,
) -> dict:
    """Stream ``source`` through the model in ``model_dir``; returns the summary dict.

    ``events``: a JSON Lines file or "-" for stdout; ``save_anomalies``: folder for anomalous
    frames + overlays; ``record``: overlay video file; ``show``: live window. The summary is
    printed (to stderr when events go to stdout) and written to ``summary_path`` if given.
    """
    try:
        detector = Detector.load(model_dir, backend=backend, threshold=threshold, **(backend_options or {}))
    except BaseException:  # the caller's sinks are ours to close on every path (they may hold threads, locks)
        for s in extra_sinks:
            with contextlib.suppress(Exception):
                s.close()
        raise
    sinks: list[Sink] = []
    src = None
    try:
        src = open_source(source, opener=opener, reconnect=reconnect)
        if events is not None:
            sinks.append(JsonlSink(events))
        if save_anomalies is not None:
            sinks.append(AnomalySaver(save_anomalies))
        if record is not None:
            sinks.append(VideoRecorder(record, src.fps))
        pipeline_ref: list[Pipeline] = []
        if show:
            sinks.append(WindowSink(lambda: pipeline_ref[0].stop("window closed")))
        sinks.extend(extra_sinks)
        pipeline = Pipeline(detector, src, sinks, batch=batch, min_consecutive=min_consecutive, max_frames=max_frames)
        pipeline_ref.append(pipeline)
        with stop_on_signals(pipeline) if handle_signals else contextlib.nullcontext():
            summary = pipeline.run()
    except BaseException:
        # extra_sinks too: a failure before they joined ``sinks`` (a bad --source) must still
        # stop their threads; closing twice is harmless.
        for s in sinks + [x for x in extra_sinks if x not in sinks]:
            with contextlib.suppress(Exception):
                s.close()
        if src is not None:
            src.close()
        raise
    finally:
        detector.close()
    if summary_path is not None:
        write_json_atomic(summary_path, summary)
    if print_summary:
        out = sys.stderr if events is not None and str(events) == "-" else sys.stdout
        print(format_summary(summary), file=out, flush=True)
    return summary
