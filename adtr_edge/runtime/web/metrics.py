"""Prometheus metrics of one pipeline, in its own ``CollectorRegistry`` (not the process-global
one: two pipelines in one process, or the tests, never mix their series).

Series (every per-source series carries ``source``, the label ``status()["sources"]`` uses)::

    adtr_frames_total{source}                  frames processed (what the sinks saw)
    adtr_anomalous_frames_total{source}        of which labelled anomalous
    adtr_alarms_total{source}                  debounced alarms started
    adtr_dropped_frames_total{source}          live frames replaced by a newer one before inference
    adtr_reconnects_total{source}              successful reopenings of a lost live source
    adtr_corrupt_inputs_total{source}          unreadable inputs skipped
    adtr_source_live{source}, adtr_alarm_active{source}          gauges, 0/1
    adtr_source_fps{source}                    gauge: the source's smoothed frame rate
    adtr_stage_latency_seconds{source,stage}   histogram per stage (preprocess, backbone, ...)
    adtr_fps, adtr_threshold, adtr_running, adtr_uptime_seconds  pipeline gauges
    adtr_delivery_backlog{sink}                events a delivering sink still holds (see below)

Frames, anomalous frames and alarms are counted here on the sink thread (so they equal the run's
summary once it ends); drops, reconnects and corrupt inputs are the source's own counters, read
from ``pipeline.status()`` at scrape time. A stage's latency is that of the batch the frame ran in.

Delivery backlog hook: any sink of the pipeline with a ``backlog()`` method returning an int (events
accepted but not yet delivered, e.g. a spool waiting for a broker) appears as
``adtr_delivery_backlog{sink=<its .name, else its class name>}``. The method is called on the
scrape thread, so it must only read a counter, never wait.
"""

from __future__ import annotations

import threading
from typing import Dict, Iterator, Optional, Tuple

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..sinks import Sink

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# status()["sources"][label] key -> (metric name, help)
SOURCE_COUNTERS = {
    "drops": ("adtr_dropped_frames", "Live frames replaced by a newer one before inference took them."),
    "reconnects": ("adtr_reconnects", "Successful reopenings of a lost live source."),
    "corrupt": ("adtr_corrupt_inputs", "Unreadable inputs the source skipped."),
}


class StreamMetrics(Sink):
    """A sink that counts what the sinks see and exposes it, with the pipeline's live status."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.pipeline = None
        self._lock = threading.Lock()
        self._counts: Dict[str, Dict[str, int]] = {}  # source -> frames / anomalous / alarms
        self._stage_children: Dict[Tuple[str, str], object] = {}
        self.latency = Histogram("adtr_stage_latency_seconds", "Latency of each pipeline stage (the frame's batch).",
                                 ["source", "stage"], registry=self.registry, buckets=STAGE_BUCKETS)
        self.registry.register(_Collector(self))

    # -- sink ------------------------------------------------------------------------------------
    def attach(self, pipeline) -> None:
        self.pipeline = pipeline

    def _count(self, source: str) -> Dict[str, int]:
        c = self._counts.get(source)
        if c is None:
            c = self._counts[source] = {"frames": 0, "anomalous": 0, "alarms": 0}
        return c

    def on_frame(self, r) -> None:
        with self._lock:
            c = self._count(r.source)
            c["frames"] += 1
            c["anomalous"] += int(bool(r.detection.label))
            c["alarms"] += sum(1 for e in r.alarm_events if e.kind == "alarm_start")
        for stage, ms in r.detection.timings.items():
            child = self._stage_children.get((r.source, stage))
            if child is None:
                child = self._stage_children[(r.source, stage)] = self.latency.labels(r.source, stage)
            child.observe(float(ms) / 1e3)

    def counts(self) -> Dict[str, Dict[str, int]]:
        with self._lock:
            return {k: dict(v) for k, v in self._counts.items()}

    def text(self) -> bytes:
        """The exposition text (what /metrics serves)."""
        return generate_latest(self.registry)


def _backlogs(pipeline) -> Iterator[Tuple[str, int]]:
    for sink in getattr(pipeline, "sinks", ()):
        hook = getattr(sink, "backlog", None)
        if not callable(hook):
            continue
        try:
            value = hook()
        except Exception:  # a sink's bug must not break the scrape of everything else
            continue
        if value is not None:
            yield str(getattr(sink, "name", None) or type(sink).__name__), int(value)


class _Collector:
    """Builds the counter and gauge families at scrape time (no state of its own)."""

    def __init__(self, metrics: StreamMetrics):
        self.metrics = metrics

    def describe(self):
        return []  # families depend on the sources seen; described when collected

    def collect(self):
        status: Optional[dict] = self.metrics.pipeline.status() if self.metrics.pipeline is not None else None
        counts = self.metrics.counts()
        sources = dict(status["sources"]) if status else {}
        labels = list(dict.fromkeys(list(sources) + list(counts)))
        for key, name, help_text in (("frames", "adtr_frames", "Frames processed."),
                                     ("anomalous", "adtr_anomalous_frames", "Frames labelled anomalous."),
                                     ("alarms", "adtr_alarms", "Debounced alarms started.")):
            fam = CounterMetricFamily(name, help_text, labels=["source"])
            for label in labels:
                fam.add_metric([label], counts.get(label, {}).get(key, 0))
            yield fam
        for key, (name, help_text) in SOURCE_COUNTERS.items():
            fam = CounterMetricFamily(name, help_text, labels=["source"])
            for label in labels:
                fam.add_metric([label], int(sources.get(label, {}).get(key, 0) or 0))
            yield fam
        for key, name, help_text in (("live", "adtr_source_live", "1 for a camera or stream, 0 for a file or folder."),
                                     ("alarm", "adtr_alarm_active", "1 while a debounced alarm is active.")):
            fam = GaugeMetricFamily(name, help_text, labels=["source"])
            for label in labels:
                fam.add_metric([label], float(bool(sources.get(label, {}).get(key))))
            yield fam
        fam = GaugeMetricFamily("adtr_camera_drift", "1 while the median of the source's last frames is outside the training "
                                "normals' range of this measure (grey: exposure, sharpness: focus).", labels=["source", "measure"])
        for label in labels:
            for measure, out in sorted((sources.get(label, {}).get("camera_drift") or {}).items()):
                fam.add_metric([label, measure], float(out))
        yield fam
        fam = GaugeMetricFamily("adtr_source_fps", "Smoothed current frame rate of each source (several share one model).",
                                labels=["source"])
        for label in labels:
            fam.add_metric([label], float(sources.get(label, {}).get("fps") or 0.0))
        yield fam
        backlog = GaugeMetricFamily("adtr_delivery_backlog", "Events a delivering sink accepted but has not delivered yet.",
                                    labels=["sink"])
        for sink, value in _backlogs(self.metrics.pipeline):
            backlog.add_metric([sink], value)
        yield backlog
        if status is None:
            return
        for name, help_text, value in (
            ("adtr_fps", "Smoothed current frame rate of the pipeline.", status.get("fps") or 0.0),
            ("adtr_threshold", "Raw-score threshold the detector uses now.", status.get("threshold")),
            ("adtr_running", "1 while the pipeline runs.", float(bool(status.get("running")))),
            ("adtr_uptime_seconds", "Seconds since the pipeline started.", status.get("uptime_s") or 0.0),
        ):
            yield GaugeMetricFamily(name, help_text, value=float(value))
