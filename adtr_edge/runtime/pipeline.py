"""The streaming pipeline: capture threads -> inference -> sink thread, joined by bounded buffers.

    sources --[a reader thread each]--> feeds (bounded) --[Merge: one step]--> inference (caller's thread)
            --> out_q (bounded) --[sink thread]--> sinks

One source or many (``runtime/multisource.py``): every step batches the frames that the sources
have ready through one model call, so N cameras share one backend. Each source keeps its own
alarm debounce, counters and name (events, saved anomalies and recordings carry it); a source that
ends or is lost ends alone, and the stream ends when every source has ended.

Bounded buffers keep memory flat over hours: a slow sink slows inference, slow inference backs up
file reading, and a live source then drops its stale frames (counted) instead of queueing them.
Inference goes through ``Detector.detect_batches`` -> ``backend.infer_many`` so a backend with two
device streams overlaps the backbone of one batch with the transformer of the previous one.

Stopping (SIGINT/SIGTERM, 'q' in the window, ``--max-frames``, end of the sources) always runs the
same path: capture stops, buffered frames are processed, every sink is flushed and closed, the
summary is printed and returned.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence


from ..errors import AdtrError
from ..fileio import write_json_atomic
from .alarms import MAX_ALARM_HISTORY, AlarmTracker
from .detector import Detector
from ..frame_quality import QUALITY_KEY
from .events import FrameResult, SourceEvent
from .model_swap import ModelSwap, SwapRequest
from .multisource import GATHER_S, Feed, Merge, Step
from .review import model_digest
from .signals import stop_on_signals
from .source_state import SourceState
from .sinks import AnomalySaver, JsonlSink, PerSource, Sink, VideoRecorder, WindowSink, merge_sink_summaries
from .source_list import as_named, file_safe_names, resolve_names
from .sources import Opener, ReconnectPolicy, Source, open_source
from .stats import FpsMeter, LatencyStats, StageStats
from .summary import format_summary

__all__ = ["MAX_ALARM_HISTORY", "AlarmTracker", "Pipeline", "format_summary", "run_stream", "stop_on_signals"]

log = logging.getLogger(__name__)

_END = object()  # queue sentinel
BAD_ENDS = ("source lost", "error")


class Pipeline(ModelSwap):
    """Runs ``detector`` over ``source`` (one Source, or (name, Source) pairs) into ``sinks``;
    ``run()`` returns the summary dict."""

    def __init__(
        self,
        detector: Detector,
        source: Source | Sequence[tuple[str, Source]],
        sinks: Sequence[Sink],
        *,
        batch: int = 1,
        min_consecutive: int = 1,
        max_frames: int | None = None,
        queue_size: int = 4,
        gather_s: float = GATHER_S,
        model: Optional[dict] = None,
        load_model: Optional[Callable[[str], Detector]] = None,
    ):
        """``model``: {"path", "digest"} of the running model (events carry the digest);
        ``load_model``: how ``swap_model`` opens another folder (the same backend and options)."""
        if batch < 1:
            raise AdtrError(f"--batch must be >= 1, got {batch}")
        if max_frames is not None and max_frames < 1:
            raise AdtrError(f"--max-frames must be >= 1, got {max_frames}")
        pairs = [(source.label, source)] if isinstance(source, Source) else list(source)
        if not pairs:
            raise AdtrError("no source to stream")
        names = [n for n, _ in pairs]
        if len(set(names)) != len(names):
            raise AdtrError(f"source names must be unique, got {names}")
        if batch > 1 and any(s.live for _, s in pairs):
            # Waiting for N frames of one camera adds N-1 frames of latency: live sources give one
            # frame per step (a step batches the cameras instead); micro-batching is for files.
            log.info("live source: --batch %d applies to files only; each camera gives 1 frame per step", batch)
        self.detector = detector
        self.sinks = list(sinks)
        self.merge = Merge(pairs, batch=batch, max_frames=max_frames, capacity=queue_size, gather_s=gather_s,
                           max_step=getattr(getattr(detector, "backend", None), "max_batch", None))
        # Each source's exposure and focus against the training normals' (frame_quality); models
        # exported before the ranges were recorded have none, and their streams are not watched.
        ranges = (getattr(getattr(detector, "meta", None), "raw", None) or {}).get(QUALITY_KEY)
        self.states = {f.name: SourceState(f, min_consecutive, ranges) for f in self.merge.feeds}
        self.sources = {name: st.source for name, st in self.states.items()}
        self.min_consecutive = min_consecutive
        self.out_q: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stats = StageStats()
        self.latency = LatencyStats()  # capture -> result, per frame, all sources
        self.fps = FpsMeter()
        self.processed = 0
        self.anomalous = 0
        self.stop_reason = "end of source"
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._inference_done = threading.Event()
        # Model swaps: another thread loads and checks the new model, the inference thread switches
        # to it between two steps (_batches hands back the step it had taken: _carry).
        self.model = dict(model) if model else {"path": None, "digest": None}
        self._load_model = load_model
        self._swap_lock = threading.Lock()  # one swap at a time
        self._handoff = threading.Lock()  # the request passes to the inference thread, or is withdrawn, once
        self._swap: Optional[SwapRequest] = None
        self._carry: Optional[Step] = None
        self._newest: dict = {}  # source -> its newest frame's image (a reference): the new model's warm-up
        self._past_backend = {"reconnects": 0, "gap_s": 0.0}  # counters of the backends swapped out
        self.swaps: list[dict] = []
        self._announce: dict = {}  # source -> the swap record its model_swap event still waits for

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask for a clean stop of every source (safe from signal handlers and other threads)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()
        self.merge.stop()

    # -- sink thread -----------------------------------------------------------------------
    def _deliver(self) -> None:
        failed: set[int] = set()
        while True:
            item = self.out_q.get()
            if item is _END:
                break
            results, events = item
            for r in results:  # the camera watch, here on the sink thread rather than in the inference loop
                changes = self.states[r.source].camera_events(r.frame)
                if changes:  # sent with the frame that showed them, after its alarm events
                    r.alarm_events = r.alarm_events + changes
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

    # -- inference thread ------------------------------------------------------------------
    def _batches(self, in_flight: deque) -> Iterator[list]:
        """The image batches of the steps, in order; ends early, keeping the step it took in
        ``_carry``, when a model swap waits (the detector then drains what is in flight)."""
        steps = self.merge.steps()
        while True:
            if self._carry is not None:
                step, self._carry = self._carry, None
            else:
                step = next(steps, None)
                if step is None:
                    return
            if step.frames and self._swap is not None:
                self._carry = step
                return
            if not step.frames and not any(s.frames for s in in_flight):
                self._emit_frameless(step)  # nothing in flight to keep order with
                continue
            in_flight.append(step)
            if step.frames:
                yield [f.image for f in step.frames]

    def _drain_frameless(self, in_flight: deque) -> None:
        """Steps without frames (skipped inputs, ended sources) that queued behind a batch."""
        while in_flight and not in_flight[0].frames:
            self._emit_frameless(in_flight.popleft())

    def _emit_frameless(self, step: Step) -> None:
        for _, _, notices in step.items:
            if notices:
                self.out_q.put(([], notices))
        self._end_sources(step.ended)

    def _emit(self, step: Step, detections: list) -> None:
        self._report_backend_gaps([step])
        self.fps.tick(len(detections))
        done = time.time()
        at = 0
        for feed, frames, notices in step.items:
            st = self.states[feed.name]
            dets = detections[at: at + len(frames)]
            at += len(frames)
            if frames:
                st.fps.tick(len(frames))
                if st.name in self._announce:  # the first frame of this source the new model scored
                    self._announce_swap(st.name, frames[0].index)
            results: list[FrameResult] = []
            for frame, det in zip(frames, dets):
                due = [n for n in notices if n.frame is not None and n.frame <= frame.index]
                if due:  # inputs skipped just before this frame: in input order in the events
                    if results:
                        self.out_q.put((results, []))
                        results = []
                    self.out_q.put(([], due))
                    notices = notices[len(due):]
                self.stats.add(det.timings)
                ms = (done - frame.timestamp) * 1e3
                st.latency.add(ms)
                self.latency.add(ms)
                self.processed += 1
                st.processed += 1
                self.anomalous += int(det.label)
                st.anomalous += int(det.label)
                events = st.alarms.update(frame, det)
                for e in events:
                    e.extra["model"] = self.model["digest"]
                results.append(FrameResult(frame, det, st.name, st.alarms.active, st.fps.current, events, self.model["digest"]))
                self._newest[st.name] = frame.image
            if results or notices:  # notices: inputs skipped after the item's last frame
                # The sink thread never dies (it contains sink failures), so this put always returns.
                self.out_q.put((results, notices))
        self._end_sources(step.ended)

    def _report_backend_gaps(self, steps: Sequence[Step]) -> None:
        """A remote backend's outages as ``backend_gap`` events, sent before the first frames of
        ``steps`` (those that ran after a server came back, or that never ran because it did not),
        so the events file shows where the stream waited: one per source with frames there (each
        waited), at the index of its first such frame."""
        gaps = self.detector.backend.take_gaps()
        if not gaps:  # every step of an in-process backend, and of a remote one that stayed up
            return
        firsts: dict = {}
        for step in steps:
            for feed, frames, _ in step.items:
                if frames and feed.name not in firsts:
                    firsts[feed.name] = frames[0].index
        firsts = list(firsts.items())
        for gap in gaps:
            reason = f"no inference for {gap['seconds']:.2f} s ({gap['reason']})"
            if not gap.get("recovered", True):
                reason += "; the server did not come back"
            self.out_q.put(([], [SourceEvent("backend_gap", name, gap["server"], reason, gap["start"], index)
                                 for name, index in firsts]))

    def _end_sources(self, feeds: Sequence[Feed]) -> None:
        """Close the alarm of each ended source, report a lost one; the others go on."""
        for feed in feeds:
            st = self.states[feed.name]
            if st.ended_by is not None:
                continue
            st.ended_by = "stopped" if self._stop.is_set() and feed.ended_by == "end of source" else feed.ended_by
            error = feed.error or feed.source.error
            events: list = st.alarms.finish("source lost" if feed.source.error else "stream end")
            if error:
                msg = error if st.name == feed.source.label else f"{st.name}: {error}"
                self.errors.append(msg)
                log.error("%s", msg)
                kind = "source_lost" if feed.source.error else "capture_error"
                events.append(SourceEvent(kind, st.name, feed.source.label, error, time.time()))
            running = sum(s.ended_by is None for s in self.states.values())
            if len(self.states) > 1:
                log.info("source %r ended (%s); %d of %d still running", st.name, st.ended_by, running, len(self.states))
            if events:
                self.out_q.put(([], events))

    # -- run -------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        self._started = started
        for sink in self.sinks:
            sink.attach(self)
        deliver = threading.Thread(target=self._deliver, name="sinks", daemon=True)
        deliver.start()
        self.merge.start()
        in_flight: deque[Step] = deque()
        try:
            while True:
                for detections in self.detector.detect_batches(self._batches(in_flight)):
                    self._drain_frameless(in_flight)
                    self._emit(in_flight.popleft(), detections)
                    self._drain_frameless(in_flight)
                if self._carry is None:  # the sources ended
                    break
                self._apply_swap()  # nothing in flight now: the carried step runs on the new model
        except Exception as e:
            # A remote backend that gave up has an outage to report: at the frames that never ran.
            self._report_backend_gaps(list(in_flight))
            self.errors.append(str(e) if isinstance(e, AdtrError) else f"inference failed: {e.__class__.__name__}: {e}")
            if not isinstance(e, AdtrError):
                log.exception("inference failed")
            self.stop("error")
        finally:
            self._inference_done.set()
            if self._carry is not None:  # an error after a swap began: its step is in flight too
                in_flight.append(self._carry)
                self._carry = None
            self.merge.abandon()  # readers blocked on a full feed must not wait for a taker
            for step in in_flight:  # after an error: the ends of sources still get reported
                self._end_sources(step.ended)
            self._end_sources(self.merge.feeds)
            self.out_q.put(_END)
            self.merge.join(timeout=10.0)
            deliver.join()
            for src in self.sources.values():
                src.close()
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as e:
                    self.errors.append(f"closing {type(sink).__name__}: {e}")
        if not self._stop.is_set():
            self.stop_reason = self._end_reason()
        wall = time.perf_counter() - started
        return self.summary(wall)

    def _end_reason(self) -> str:
        ends = [st.ended_by for st in self.states.values()]
        if all(e in BAD_ENDS for e in ends):
            return "source lost" if "source lost" in ends else "error"
        good = [e for e in ends if e not in BAD_ENDS]
        return "max frames" if all(e == "max frames" for e in good) else "end of source"

    def status(self) -> dict:
        """Live health, safe to call from any thread while ``run`` goes on (plain reads of counters
        the pipeline threads update): what a web view or a metrics endpoint shows. ``sources`` maps
        each source's name to its counters, one entry per source."""
        started = getattr(self, "_started", None)
        return merge_sink_summaries({
            "backend": self.detector.backend_name,
            "threshold": self.detector.thresholds.threshold,
            "frames": self.processed,
            "anomalous": self.anomalous,
            "alarms": sum(st.alarms.count for st in self.states.values()),
            "fps": self.fps.current,
            "uptime_s": round(time.perf_counter() - started, 3) if started is not None else 0.0,
            "stages_ms": self.stats.summary(),
            "running": started is not None and not self._inference_done.is_set(),
            **self._backend_counters(),
            "sources": {name: st.counters() for name, st in self.states.items()},
            "errors": list(self.errors),
        }, self.sinks)

    def _backend_counters(self) -> dict:
        c = self.detector.backend.counters()
        return {"backend_reconnects": c["reconnects"] + self._past_backend["reconnects"],
                "backend_gap_s": round(c["gap_s"] + self._past_backend["gap_s"], 3)}

    # -- model swaps -----------------------------------------------------------------------
    def summary(self, wall_s: float) -> dict:
        """Totals at the top (the single-source keys), one entry per source under ``sources``."""
        per = {name: st.summary(wall_s) for name, st in self.states.items()}
        several = len(per) > 1
        alarm_list = [dict(a, source=name) if several else a for name, s in per.items() for a in s["alarm_list"]]
        return merge_sink_summaries({
            "source": ", ".join(per),
            "model": dict(self.model),
            "swaps": [dict(s) for s in self.swaps],
            "backend": self.detector.backend_name,
            "threshold": self.detector.thresholds.threshold,
            "frames": self.processed,
            "anomalous": self.anomalous,
            "drops": sum(s["drops"] for s in per.values()),
            "corrupt": sum(s["corrupt"] for s in per.values()),
            "reconnects": sum(s["reconnects"] for s in per.values()),
            **self._backend_counters(),
            "wall_s": round(wall_s, 3),
            "fps": round(self.processed / wall_s, 3) if wall_s > 0 else None,
            "stages_ms": self.stats.summary(),
            "latency_ms": self.latency.summary(),
            "alarms": sum(s["alarms"] for s in per.values()),
            "alarm_list": alarm_list,
            "min_consecutive": self.min_consecutive,
            "stopped_by": self.stop_reason,
            "errors": list(self.errors),
            "sources_lost": sum(s["ended_by"] == "source lost" for s in per.values()),
            "sources": per,
        }, self.sinks)


def _per_source_sinks(opened: Sequence[tuple[str, Source]], save_anomalies, record, show, request_stop) -> list[Sink]:
    """--save-anomalies, --record and --show of a many-source stream: one sink per source
    (a subfolder, a file suffix, a window per name)."""
    sinks: list[Sink] = []
    if save_anomalies is not None:
        safe = file_safe_names([n for n, _ in opened], "--save-anomalies")
        sinks.append(PerSource({n: AnomalySaver(Path(save_anomalies) / safe[n]) for n, _ in opened}))
    if record is not None:
        safe = file_safe_names([n for n, _ in opened], "--record")
        rec = Path(record)
        sinks.append(PerSource({n: VideoRecorder(rec.with_name(f"{rec.stem}-{safe[n]}{rec.suffix}"), src.fps)
                                for n, src in opened}))
    if show:
        sinks.append(PerSource({n: WindowSink(request_stop, title=f"adtr-edge: {n}") for n, _ in opened}))
    return sinks


def run_stream(
    model_dir: str | Path,
    source: Any,
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
    gather_ms: float = GATHER_S * 1e3,
) -> dict:
    """Stream ``source`` through the model in ``model_dir``; returns the summary dict.

    ``source``: one spelling (``open_source``), or several as a list of spellings, (name, spelling)
    pairs or ``NamedSource`` entries (``runtime/source_list.py``); names must be unique.
    ``events``: a JSON Lines file or "-" for stdout; ``save_anomalies``: folder for anomalous
    frames + overlays; ``record``: overlay video file; ``show``: live window. With several sources
    these are per source: a subfolder / a ``-NAME`` file suffix / a window per name. ``max_frames``
    counts per source; ``gather_ms`` bounds how long a step waits for a source with no frame ready.
    The summary is printed (to stderr when events go to stdout) and written to ``summary_path``.
    """
    try:
        entries = resolve_names(as_named(source))  # a bad or duplicate name fails before anything is opened
        detector = Detector.load(model_dir, backend=backend, threshold=threshold, **(backend_options or {}))
    except BaseException:  # the caller's sinks are ours to close on every path (they may hold threads, locks)
        for s in extra_sinks:
            with contextlib.suppress(Exception):
                s.close()
        raise
    sinks: list[Sink] = []
    opened: list[tuple[str, Source]] = []
    pipeline_ref: list[Pipeline] = []
    try:
        for name, entry in entries:
            opened.append((name, open_source(entry.spec, opener=opener, reconnect=reconnect)))

        def request_stop() -> None:
            pipeline_ref[0].stop("window closed")

        if events is not None:
            sinks.append(JsonlSink(events))
        if len(opened) > 1:
            sinks.extend(_per_source_sinks(opened, save_anomalies, record, show, request_stop))
        else:
            if save_anomalies is not None:
                sinks.append(AnomalySaver(save_anomalies))
            if record is not None:
                sinks.append(VideoRecorder(record, opened[0][1].fps))
            if show:
                sinks.append(WindowSink(request_stop))
        sinks.extend(extra_sinks)
        pipeline = Pipeline(detector, opened, sinks, batch=batch, min_consecutive=min_consecutive, max_frames=max_frames,
                            gather_s=gather_ms / 1e3, model=model_digest(model_dir),
                            load_model=lambda path: Detector.load(path, backend=backend, **(backend_options or {})))
        pipeline_ref.append(pipeline)
        with stop_on_signals(pipeline) if handle_signals else contextlib.nullcontext():
            summary = pipeline.run()
    except BaseException:
        # extra_sinks too: a failure before they joined ``sinks`` (a bad --source) must still
        # stop their threads; closing twice is harmless.
        for s in sinks + [x for x in extra_sinks if x not in sinks]:
            with contextlib.suppress(Exception):
                s.close()
        for _, src in opened:
            src.close()
        raise
    finally:
        detector.close()
        if pipeline_ref and pipeline_ref[0].detector is not detector:  # swapped in while it ran
            pipeline_ref[0].detector.close()
    if summary_path is not None:
        write_json_atomic(summary_path, summary)
    if print_summary:
        out = sys.stderr if events is not None and str(events) == "-" else sys.stdout
        print(format_summary(summary), file=out, flush=True)
    return summary
