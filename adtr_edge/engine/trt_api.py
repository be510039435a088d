"""The only module that imports ``tensorrt``; every difference between TensorRT versions lives here.

Supported: 8.5 (JetPack 5), 8.6 (JetPack 6.0), 10.x (JetPack 6.1+/desktop), 11.x (desktop pip).
Every name used below was checked against NVIDIA's Python bindings per release branch; see
``API_NOTES.md`` in this folder. Callers never branch on the version themselves: they ask a
predicate (``needs_explicit_batch_flag``, ``weakly_typed`` ...) or call a helper.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdtrError

MIN_VERSION = (8, 5)


def parse_version(text: str) -> tuple[int, int]:
    """'10.3.0.30' -> (10, 3). Unparseable text is a clear error (a broken install)."""
    m = re.match(r"^\s*(\d+)\.(\d+)", str(text))
    if not m:
        raise AdtrError(f"cannot read the TensorRT version from tensorrt.__version__ = {text!r}")
    return int(m.group(1)), int(m.group(2))


def import_tensorrt():
    """Import tensorrt lazily so nothing else in the toolkit needs it installed."""
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as e:
        raise AdtrError(
            f"TensorRT is not installed ({e}); on Jetson install it with JetPack, on desktop 'pip install tensorrt'"
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

    def pin_layer_fp32(self, layer) -> None:
        """Keep one layer (and its outputs) in FP32: LayerNorm/Softmax under FP16/INT8 builds."""
        if not self.weakly_typed:
            raise AdtrError(f"TensorRT {self.version_string}: per-layer precision does not exist (strongly typed)")
        layer.precision = self.trt.DataType.FLOAT
        for i in range(layer.num_outputs):
            layer.set_output_type(i, self.trt.DataType.FLOAT)

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
        if calibration_profile is not None:
            config.set_calibration_profile(calibration_profile)

    def use_dla(self, config, core: int) -> None:
        trt = self.trt
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

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
    def deserialize(self, runtime, plan: bytes, source: str):
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise AdtrError(f"TensorRT {self.version_string} cannot load {source}; rebuild it with adtr-edge build-engine")
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

    def profile_shape(self, engine, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        mn, opt, mx = engine.get_tensor_profile_shape(name, 0)
        return tuple(int(d) for d in mn), tuple(int(d) for d in opt), tuple(int(d) for d in mx)


# -- loggers -----------------------------------------------------------------------------------
_logger_classes: dict[int, type] = {}
_lock = threading.Lock()


def file_logger(api: TrtApi, path: Path | None, verbose: bool = False):
    """An ILogger writing every message to ``path`` (or only warnings+ to nothing when None).

    The class is created on first use because its base comes from the tensorrt module.
    """
    trt = api.trt
    with _lock:
        cls = _logger_classes.get(id(trt))
        if cls is None:

            class FileLogger(trt.ILogger):
                def __init__(self, path, min_severity):
                    trt.ILogger.__init__(self)
                    self.path = path
                    self.min_severity = min_severity
                    self.errors: list[str] = []
                    self._fh = open(path, "a", encoding="utf-8") if path is not None else None

                def log(self, severity, msg):
                    # Severity is ordered INTERNAL_ERROR(0) .. VERBOSE(4); lower = more severe.
                    if int(severity) <= int(trt.ILogger.ERROR):
                        self.errors.append(str(msg))
                    if self._fh is not None and int(severity) <= int(self.min_severity):
                        self._fh.write(f"[{str(severity).split('.')[-1]}] {msg}\n")
                        self._fh.flush()

                def close(self):
                    if self._fh is not None:
                        self._fh.close()
                        self._fh = None

            cls = FileLogger
            _logger_classes[id(trt)] = cls
    severity = trt.ILogger.VERBOSE if verbose else trt.ILogger.INFO
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return cls(path, severity)


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
    """Whether tensorrt imports and is new enough (the GPU check is in runtime.cuda)."""
    try:
        api = load_api()
    except AdtrError as e:
        return False, str(e)
    return True, f"TensorRT {api.version_string}"
