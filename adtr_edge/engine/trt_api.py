"""The only module that imports ``tensorrt``; every difference between TensorRT versions lives here.

Supported: 8.5 (JetPack 5), 8.6 (JetPack 6.0), 10.x (JetPack 6.1+/desktop), 11.x (desktop pip).
Every name used below was checked against NVIDIA's Python bindings per release branch; see
``API_NOTES.md`` in this folder. Callers never branch on the version themselves: they ask a
predicate (``needs_explicit_batch_flag``, ``weakly_typed`` ...) or call a helper.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdtrError
from ..export.opset import parse_version

MIN_VERSION = (8, 5)


def import_tensorrt():
    """Import tensorrt lazily so nothing else in the toolkit needs it installed."""
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as e:
        raise AdtrError(
            f"TensorRT is not installed ({e}); on Jetson install it with JetPack, on desktop 'pip install tensorrt-cu12' "
            f"(driver >= 525; tensorrt-cu13 needs a driver >= 580)"
        ) from None
    return tensorrt


@dataclass
class ParsedError:
    """One ONNX parser error, read through the API that exists in every version."""

    node: int
    desc: str


class TrtApi:
    """A TensorRT module plus version predicates and version-independent helpers."""

    def __init__(self, trt_module: Any):
        self.trt = trt_module
        self.version_string = str(trt_module.__version__)
        self.version = parse_version(self.version_string)
        if self.version < MIN_VERSION:
            raise AdtrError(
                f"TensorRT {self.version_string} is too old: adtr-edge needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer"
            )

    @property
    def major(self) -> int:
        return self.version[0]

    # -- feature predicates ----------------------------------------------------------------
    @property
    def needs_explicit_batch_flag(self) -> bool:
        """Below 10, networks are implicit-batch unless EXPLICIT_BATCH is passed; 11 removed the flag."""
        return self.major < 10

    @property
    def weakly_typed(self) -> bool:
        """8.x-10.x: precision is chosen by builder flags (FP16/INT8) and per-layer constraints.
        11.x: networks are always strongly typed; precision comes from the ONNX file."""
        return self.major < 11

    @property
    def has_calibrators(self) -> bool:
        """IInt8*Calibrator and ``config.int8_calibrator`` exist up to 10.x (removed in 11)."""
        return self.major < 11

    @property
    def has_strongly_typed_flag(self) -> bool:
        """NetworkDefinitionCreationFlag.STRONGLY_TYPED exists from 9.0 (always on, deprecated, in 11)."""
        return self.major >= 9

    @property
    def supports_qdq(self) -> bool:
        """Explicit quantisation (Q/DQ) of the kind ORT writes is supported from 8.6."""
        return self.version >= (8, 6)

    @property
    def has_normalization_layer(self) -> bool:
        """LayerNormalization maps to INormalizationLayer (computes in FP32) from 8.6."""
        return self.version >= (8, 6)

    @property
    def supports_dla(self) -> bool:
        """DLA builds are refused on TensorRT 11.0-11.3 (see ``use_dla``)."""
        return not ((11, 0) <= self.version < (11, 4))

    @property
    def cuda_graphs_allowed(self) -> bool:
        """We capture enqueueV3 into CUDA graphs only on 10+, where NVIDIA documents it for V3."""
        return self.major >= 10

    # -- building --------------------------------------------------------------------------
    def create_network(self, builder, strongly_typed: bool = False):
        trt = self.trt
        flags = 0
        if self.needs_explicit_batch_flag:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if strongly_typed and self.weakly_typed:
            if not self.has_strongly_typed_flag:
                raise AdtrError(f"TensorRT {self.version_string} has no strongly typed networks (needs 9.0+)")
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return builder.create_network(flags)

    def parse_onnx(self, network, logger, path: Path):
        """Parse an ONNX file (external data next to it is found by path); errors -> AdtrError."""
        parser = self.trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(str(path))
        if not ok:
            errors = [ParsedError(int(e.node()), str(e.desc())) for e in (parser.get_error(i) for i in range(parser.num_errors))]
            detail = "; ".join(f"node {e.node}: {e.desc}" for e in errors[:3]) or "no error details"
            raise AdtrError(f"TensorRT {self.version_string} cannot parse {path}: {detail}")
        return parser

    def set_workspace(self, config, megabytes: int) -> None:
        config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(megabytes) << 20)

    def set_precision_flags(self, config, fp16: bool, int8: bool, obey_constraints: bool) -> None:
        """Weakly typed builds only; strongly typed (11.x) have no such flags."""
        if not self.weakly_typed:
            if fp16 or int8:
                raise AdtrError(f"TensorRT {self.version_string} has no FP16/INT8 builder flags (strongly typed)")
            return
        flag = self.trt.BuilderFlag
        if fp16:
            config.set_flag(flag.FP16)
        if int8:
            config.set_flag(flag.INT8)
        if obey_constraints:
            config.set_flag(flag.OBEY_PRECISION_CONSTRAINTS)

    def pin_layer(self, layer, precision: str = "fp32") -> None:
        """Keep one layer (and its outputs) in ``precision`` (fp32 | fp16): LayerNorm/Softmax in FP32
        under FP16/INT8 builds, the layers of a mixed-precision plan in FP16 under INT8."""
        if not self.weakly_typed:
            raise AdtrError(f"TensorRT {self.version_string}: per-layer precision does not exist (strongly typed)")
        dtype = {"fp32": self.trt.DataType.FLOAT, "fp16": self.trt.DataType.HALF}[precision]
        layer.precision = dtype
        for i in range(layer.num_outputs):
            layer.set_output_type(i, dtype)

    def sensitive_layer_types(self) -> set:
        """Layer types always kept out of reduced precision, whatever their name."""
        lt = self.trt.LayerType
        types = {lt.SOFTMAX}
        if self.has_normalization_layer:
            types.add(lt.NORMALIZATION)
        return types

    def set_calibrator(self, config, calibrator, calibration_profile) -> None:
        if not self.has_calibrators:
            raise AdtrError(
                f"TensorRT {self.version_string} has no INT8 calibrators: quantise first (adtr-edge quantize) and build the Q/DQ folder"
            )
        config.int8_calibrator = calibrator
        # False when TensorRT finds the profile invalid; calibration would then run on no shapes.
        if calibration_profile is not None and not config.set_calibration_profile(calibration_profile):
            raise AdtrError(f"TensorRT {self.version_string} rejected the INT8 calibration profile (its shapes do not fit the network input)")

    def add_profile(self, config, profile, what: str) -> int:
        """Add an optimization profile; TensorRT returns its index, or -1 when the profile is invalid
        (a build would then fail later with no word on why)."""
        index = config.add_optimization_profile(profile)
        if index < 0:
            raise AdtrError(f"TensorRT {self.version_string} rejected the optimization profile {what}")
        return index

    def check_dla(self) -> None:
        if not self.supports_dla:
            raise AdtrError(f"--dla-core: TensorRT {self.version_string} does not support DLA builds (11.0-11.3); "
                            f"use TensorRT 10.x (JetPack) or 11.4+")

    def use_dla(self, config, core: int) -> None:
        self.check_dla()
        trt = self.trt
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    def dla_fallback_layers(self, config, network) -> list[str]:
        """Layers meant for the DLA that TensorRT will run on the GPU instead (GPU_FALLBACK)."""
        dla = self.trt.DeviceType.DLA
        names = []
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if config.get_device_type(layer) == dla and not config.can_run_on_DLA(layer):
                names.append(layer.name)
        return names

    def load_timing_cache(self, config, data: bytes):
        """Attach a timing cache (empty bytes = new); a cache from another version is refused."""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, False):
            raise AdtrError(
                f"timing cache does not match TensorRT {self.version_string} or this GPU; delete it or pass another --timing-cache"
            )
        return cache

    def serialize_timing_cache(self, config) -> bytes:
        return bytes(memoryview(config.get_timing_cache().serialize()))

    def build(self, builder, network, config) -> bytes:
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise AdtrError(f"TensorRT {self.version_string} failed to build the engine (see the build log)")
        return bytes(memoryview(plan))

    # -- runtime ---------------------------------------------------------------------------
    def deserialize(self, runtime, plan: bytes, source: str, dla_core: int | None = None, sink: LogSink | None = None):
        """Load a plan; one built for a DLA core must be loaded with ``runtime.DLA_core`` set to it."""
        if dla_core is not None:
            self.check_dla()
            runtime.DLA_core = int(dla_core)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            why = f" ({sink.errors[-1]})" if sink is not None and sink.errors else ""
            raise AdtrError(f"TensorRT {self.version_string} cannot load {source}{why}; rebuild it with adtr-edge build-engine")
        return engine

    def io_tensors(self, engine) -> list[dict]:
        """Name-based I/O description (8.5+): name, is_input, shape, numpy dtype."""
        import numpy as np

        trt = self.trt
        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append({
                "name": name,
                "is_input": engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                "shape": tuple(int(d) for d in engine.get_tensor_shape(name)),
                "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
            })
        return out


# -- the one logger --------------------------------------------------------------------------------
#
# TensorRT keeps a single logger per process: the first ILogger handed to a Builder or Runtime is
# used by every builder and runtime alive at the same time, and a different one passed later is
# ignored (with a warning). So adtr-edge makes exactly one logger per tensorrt module and switches
# where its messages go: ``with logger.capture(sink):`` sends them to ``sink`` (the build log and
# error list of one build, or one backend's), innermost capture first; with no capture active,
# warnings and errors go to Python logging.

_log = logging.getLogger("adtr_edge.tensorrt")
_process_loggers: dict[int, tuple[Any, Any]] = {}  # id(tensorrt module) -> (module, logger)
_lock = threading.Lock()

# ILogger.Severity is ordered INTERNAL_ERROR(0), ERROR(1), WARNING(2), INFO(3), VERBOSE(4).
_ERROR, _WARNING, _INFO, _VERBOSE = 1, 2, 3, 4


class LogSink:
    """Where TensorRT messages go while captured: errors are kept; a file gets INFO (or VERBOSE)."""

    def __init__(self, path: Path | None = None, verbose: bool = False):
        self.path = Path(path) if path is not None else None
        self.min_level = _VERBOSE if verbose else _INFO
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, level: int, label: str, msg: str) -> None:
        if level <= _ERROR:
            self.errors.append(msg)
        elif level == _WARNING:
            self.warnings.append(msg)
        if self._fh is not None and level <= self.min_level:
            self._fh.write(f"[{label}] {msg}\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _route(sinks: list, severity, msg) -> None:
    level, label = int(severity), str(severity).split(".")[-1]
    sink = sinks[-1] if sinks else None
    if sink is not None:
        sink.write(level, label, str(msg))
    elif level <= _ERROR:
        _log.error("TensorRT: %s", msg)
    elif level == _WARNING:
        _log.warning("TensorRT: %s", msg)


def process_logger(api: TrtApi):
    """The process-wide ILogger for ``api.trt`` (its class derives from that module's ILogger)."""
    trt = api.trt
    with _lock:
        entry = _process_loggers.get(id(trt))
        if entry is None or entry[0] is not trt:

            class ProcessLogger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self._sinks: list[LogSink] = []
                    self._sinks_lock = threading.Lock()

                def log(self, severity, msg):
                    with self._sinks_lock:
                        sinks = list(self._sinks)
                    _route(sinks, severity, msg)

                @contextlib.contextmanager
                def capture(self, sink: LogSink):
                    with self._sinks_lock:
                        self._sinks.append(sink)
                    try:
                        yield sink
                    finally:
                        with self._sinks_lock:
                            self._sinks.remove(sink)

            # The module is kept with its logger so a reused id() never maps to a stale one.
            entry = (trt, ProcessLogger())
            _process_loggers[id(trt)] = entry
    return entry[1]


def installed_version() -> str | None:
    """``tensorrt.__version__`` when tensorrt imports here, else None (e.g. to pick the export opset)."""
    try:
        import tensorrt  # noqa: PLC0415
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer does not load
        return None
    return str(tensorrt.__version__)


def load_api() -> TrtApi:
    return TrtApi(import_tensorrt())


def trt_available() -> tuple[bool, str]:
    """Whether tensorrt imports and is new enough (the GPU check is in adtr_edge.cuda)."""
    try:
        api = load_api()
    except AdtrError as e:
        return False, str(e)
    return True, f"TensorRT {api.version_string}"
