"""The runtime's parts, each described once: the backends that run a model folder and the sinks a
stream writes to.

A backend entry says which folder kinds it runs, how to tell whether it can run here, its ``stream``
options with their help, and what it reports. ``runtime/loading.py`` (``--backend auto`` and
opening a backend), the ``stream`` command (its ``--backend`` choices, the options' help and which
backend an option belongs to), ``adtr-edge bench`` (its choices, availability and opening) and the
table in docs/ARCHITECTURE.md all read ``BACKENDS``. A sink entry names its class, its options and
help, the libraries it needs and what it adds to the summary; ``stream`` takes its options' help
from ``SINKS``.

Nothing heavy is imported here: classes and probes are named as ``"module:attribute"`` and
imported when asked for (a probe when ``available()`` is called, a class when a backend is opened).
The torch entry names a class of ``adtr_edge.bench``: PyTorch eager on a checkpoint, which only
``adtr-edge bench`` opens; the runtime never imports torch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import AdtrError
from ..folder import CHECKPOINT, ONNX, QDQ, RUNTIME_KINDS, TENSORRT

STREAM, BENCH = "stream", "bench"  # the commands whose --backend offers a backend
ANY = {STREAM: "auto", BENCH: "all"}  # each command's "pick for me" choice


def _resolve(dotted: str) -> Any:
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def _failed(e: BaseException) -> str:
    return f"{e.__class__.__name__}: {e}"


@dataclass(frozen=True)
class BackendEntry:
    """One inference library behind ``runtime.backends.base.Backend``."""

    name: str  # the --backend value and Backend.name
    label: str  # how messages name it
    implementation: str  # "module:Class", a Backend subclass taking (folder path, **options)
    probe: str  # "module": available when it imports; "module:function": a function returning (ok, why)
    kinds: Tuple[str, ...]  # folder kinds it runs (adtr_edge.folder.KINDS)
    commands: Tuple[str, ...]  # where --backend offers it (STREAM, BENCH)
    help: str  # one line
    reports: str  # what it measures beyond the graphs' outputs
    options: Dict[str, str] = field(default_factory=dict)  # stream option -> its help
    threads: Optional[str] = None  # the keyword that takes a thread count (stream/bench --threads)
    note: str = ""  # after its name in --backend's help
    remote: bool = False  # the graphs run elsewhere: never picked by auto, any runtime folder when asked
    # Messages ({path}, {what}: the folder and its kind's words; {why}: the probe's reason).
    picked: str = "the folder is {what}; {why}"  # why auto chose it
    requested: str = "requested; {why}"
    missing: str = "{path}: the {name} backend cannot run here: {why}"
    other_folder: str = ""  # a folder of a kind it does not run was given to it

    def available(self) -> Tuple[bool, str]:
        """(available, reason) by the probe; never raises (a broken native library is a reason)."""
        module, _, function = self.probe.partition(":")
        try:
            imported = importlib.import_module(module)
        except Exception as e:
            if function:
                return False, f"{self.label} backend unavailable ({_failed(e)})"
            return False, f"cannot import {module} ({_failed(e)})"
        if not function:
            return True, f"{module} is importable"
        try:
            ok, why = getattr(imported, function)()
        except Exception as e:
            return False, f"{self.label} check failed ({_failed(e)})"
        return bool(ok), str(why)

    def backend_class(self) -> type:
        return _resolve(self.implementation)

    def open(self, path, **options):
        """The backend for the folder at ``path``, constructed (not yet activated); options it does
        not take are refused by name."""
        cls = self.backend_class()
        accepted = {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise AdtrError(f"backend option(s) {unknown} do not apply to the {self.name} backend (it takes {sorted(accepted)})")
        return cls(path, **options)

    def say(self, template: str, folder=None, why: str = "") -> str:
        path, what = (folder.path, folder.spec.what) if folder is not None else ("", "")
        return template.format(name=self.name, label=self.label, path=path, what=what, why=why)


@dataclass(frozen=True)
class SinkEntry:
    """One place frames or alarms go (a ``runtime.sinks.Sink`` subclass)."""

    name: str
    implementation: str  # "module:Class"
    options: Dict[str, str]  # stream option -> its help
    help: str  # one line
    reports: str  # what it writes, and the keys it adds to the summary and to Pipeline.status()
    summary_keys: Tuple[str, ...] = ()
    needs: Tuple[str, ...] = ()  # modules it imports when built (its probe)
    extra: str = ""  # the pip extra that brings them
    built_by: str = "run_stream"  # "run_stream" (from its keyword) or "stream" (built there, passed as extra_sinks)

    def available(self) -> Tuple[bool, str]:
        for module in self.needs:
            try:
                importlib.import_module(module)
            except Exception as e:
                hint = f"; pip install 'adtr-edge[{self.extra}]'" if self.extra else ""
                return False, f"cannot import {module} ({_failed(e)}){hint}"
        return True, "its libraries import" if self.needs else "needs nothing beyond the runtime"

    def sink_class(self) -> type:
        return _resolve(self.implementation)


_B = "adtr_edge.runtime.backends"
BACKENDS: Dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry(
        "onnxruntime", "ONNX Runtime", f"{_B}.onnxruntime:OnnxRuntimeBackend", "onnxruntime", (ONNX, QDQ), (STREAM, BENCH),
        "ONNX exports and Q/DQ exports on the CPU, or CUDA where onnxruntime-gpu is installed",
        "host time per graph; the execution providers in use",
        options={"--threads": "ONNX Runtime intra-op threads.",
                 "--spin/--no-spin": "ONNX Runtime: idle threads spin (its default) or sleep (--no-spin: less CPU on a busy machine)."},
        threads="intra_op_threads", picked="the folder is {what}", requested="requested",
        missing="{path}: ONNX export needs onnxruntime: {why} (pip install onnxruntime)",
        other_folder="onnxruntime runs the ONNX export it was built from"),
    BackendEntry(
        "tensorrt", "TensorRT", f"{_B}.tensorrt:TensorRTBackend", f"{_B}.tensorrt:available", (TENSORRT,), (STREAM, BENCH),
        "engine folders built by 'adtr-edge build-engine', on an NVIDIA GPU or DLA",
        "host time and device time per graph (backbone_gpu, transformer_gpu)",
        options={"--cuda-graphs": "TensorRT backend: replay enqueues as CUDA graphs (TensorRT 10+, cuda-python).",
                 "--cuda-binding": "TensorRT backend: auto | cuda-python | pycuda."},
        picked="the folder holds TensorRT engines; {why}",
        missing="{path}: TensorRT engine folder, but TensorRT cannot run here: {why}",
        other_folder="the tensorrt backend runs an engine folder built from it"),
    BackendEntry(
        "triton", "Triton", f"{_B}.triton:TritonBackend", f"{_B}.triton:available", RUNTIME_KINDS, (STREAM,),
        "a Triton Inference Server serving 'adtr-edge export-triton' of the folder",
        "the round trip per request (triton); reconnects to a lost server",
        options={"--server": "Triton backend: server HOST[:PORT] (or grpc://..., http://...), serving 'adtr-edge export-triton' of MODEL_DIR.",
                 "--protocol": "Triton backend: grpc (port 8001) | http (port 8000).",
                 "--triton-model": "Triton backend: the ensemble's name (export-triton --name).",
                 "--server-timeout": "Triton backend: seconds per request.",
                 "--server-reconnect": "Triton backend: seconds to keep reconnecting to a lost server (0 = forever)."},
        note="a Triton server, --server", remote=True,
        requested="requested; the server runs the graphs, {path} gives the metadata to check it against",
        missing="--backend {name}: {why}"),
    BackendEntry(
        "torch", "PyTorch", "adtr_edge.bench.targets:TorchBackend", "torch", (CHECKPOINT,), (BENCH,),
        "PyTorch eager on a training checkpoint (benchmarks only)",
        "host time per graph; FLOPs by torch's own counter", threads="threads", note="a checkpoint folder"),
)}

_SPOOL = {"--spool": "Folder of the delivery spool (default: ~/.local/state/adtr-edge/spool).",
          "--spool-max-mb": "Most MB of undelivered events kept per destination; beyond, new ones are dropped and counted."}
_R = "adtr_edge.runtime"
SINKS: Dict[str, SinkEntry] = {e.name: e for e in (
    SinkEntry("events", f"{_R}.sinks:JsonlSink", {"--events": "JSON Lines events to FILE, or '-' for stdout."},
              "every frame's score and every alarm as JSON Lines", "one JSON line per frame and per event"),
    SinkEntry("save-anomalies", f"{_R}.sinks:AnomalySaver", {"--save-anomalies": "Folder for anomalous frames + overlays (PNG)."},
              "anomalous frames and their overlays as PNG files", "two PNG files per anomalous frame", needs=("cv2",)),
    SinkEntry("record", f"{_R}.sinks:VideoRecorder", {"--record": "Record the overlay video to FILE (.mp4/.avi)."},
              "the overlay video", "a video file (one per source with several)", needs=("cv2",)),
    SinkEntry("show", f"{_R}.sinks:WindowSink", {"--show": "Window: original | heat map | overlay ('q' quits)."},
              "a live window", "nothing; closing the window stops the stream", needs=("cv2",)),
    SinkEntry("mqtt", f"{_R}.delivery.mqtt:MqttSink",
              {"--mqtt": "Alarms to MQTT, QoS 1: mqtt://host:port/prefix (also user:pw@host, ?alarms=T&frames=T&status=T topics); "
                         "spooled on disk first.",
               "--mqtt-frames": "Also publish every frame's score to the frames topic.", **_SPOOL},
              "alarms (and optionally frame scores) to an MQTT broker, spooled on disk first",
              "summary 'delivery': {mqtt: delivered, backlog, dropped, spool}", ("delivery",), ("paho.mqtt.client",),
              "factory", "stream"),
    SinkEntry("webhook", f"{_R}.delivery.webhook:WebhookSink",
              {"--webhook": "Alarms as JSON POSTs to URL, retried with back-off (spooled on disk first).", **_SPOOL},
              "alarms as JSON POSTs, retried with back-off, spooled on disk first",
              "summary 'delivery': {webhook: delivered, backlog, dropped, spool, retries}", ("delivery",), built_by="stream"),
    SinkEntry("web", f"{_R}.web.frontend:Frontend",
              {"--http": "Live web view on HOST:PORT (PORT alone: 127.0.0.1). Off by default.",
               "--http-token": "Token the web view and metrics require (also $ADTR_HTTP_TOKEN).",
               "--metrics": "Prometheus /metrics alone on HOST:PORT (the web view also serves /metrics).",
               "--review-dir": "Review folder (MVTec layout) the web view's defect / not-a-defect reviews go to; needs --http."},
              "the live web view and Prometheus metrics", "pages, /api/status and /metrics (counters, gauges, latency histograms)",
              needs=("starlette", "uvicorn", "prometheus_client"), extra="factory", built_by="stream"),
    SinkEntry("follow-model", f"{_R}.model_watch:ModelWatcher",
              {"--follow-model": "MODEL_DIR is a stable path (a symlink a promotion repoints): when it names another folder, "
                                 "switch to it between two frames without stopping."},
              "switches the stream to the folder a stable path names", "summary 'follow_model': path, swapped, refused",
              ("follow_model",), built_by="stream"),
)}


def backends(command: Optional[str] = None) -> List[BackendEntry]:
    """The backends ``command`` offers (all of them when None), in the registry's order."""
    return [e for e in BACKENDS.values() if command is None or command in e.commands]


def backend_choices(command: str) -> Tuple[str, ...]:
    """``command``'s --backend values: its "pick for me" choice, then the backends it offers."""
    return (ANY[command], *(e.name for e in backends(command)))


def backend_help(command: str) -> str:
    """The one line of ``command --backend``'s help, e.g. ``auto | onnxruntime | ... (a Triton server, --server).``"""
    return " | ".join([ANY[command], *(e.name + (f" ({e.note})" if e.note else "") for e in backends(command))]) + "."


def check_choice(command: str, name: str) -> str:
    """``name`` when ``command`` offers it; else the one-line error naming the choices."""
    choices = backend_choices(command)
    if name not in choices:
        raise AdtrError(f"--backend {name!r}: choose one of {', '.join(choices)}")
    return name


def backend(name: str) -> BackendEntry:
    try:
        return BACKENDS[name]
    except KeyError:
        raise AdtrError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}") from None


def option_owner(option: str) -> BackendEntry:
    """The backend a ``stream`` option belongs to (``--server``: triton)."""
    for e in BACKENDS.values():
        if option in e.options:
            return e
    raise KeyError(option)


def option_help(option: str) -> str:
    """The help of a ``stream`` option, from the backend or sink it belongs to."""
    for e in (*BACKENDS.values(), *SINKS.values()):
        if option in e.options:
            return e.options[option]
    raise KeyError(option)
