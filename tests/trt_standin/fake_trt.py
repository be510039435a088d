"""Strict stand-ins for ``tensorrt`` (8.5, 8.6, 10.x, 11.x) and cuda-python's ``cudart``.

Each simulated version exposes ONLY the names its real bindings have (see
adtr_edge/engine/API_NOTES.md for where each was checked): a removed or misspelt name raises
AttributeError, as on a real device. Calls are recorded in ``module._calls``. The "GPU" is host
memory: cudaMalloc returns the address of a ctypes buffer and memcpy is ``ctypes.memmove``, so data
really flows through the buffers the code under test manages; an engine "runs" the ONNX graph it
was built from with ONNX Runtime, reading and writing those addresses. Work is asynchronous: it is
queued per stream and runs only when waited for (see "fake cudart" below), CUDA graphs replay what
was captured, and the fake tensorrt enforces one logger per process, pybind-style base __init__,
DLA's static shapes and the calibrator-callback behaviour of pyInt8.cpp.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
import types
import weakref

import numpy as np
import onnx

from tests.trt_standin import fake_pycuda

# -- strictness helpers ---------------------------------------------------------------------------


class Strict:
    """Public attributes outside ``_api`` raise AttributeError (reads and writes); those in
    ``_readonly`` (read-only properties in the real bindings) cannot be assigned."""

    _api: frozenset = frozenset()
    _readonly: frozenset = frozenset()

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in object.__getattribute__(self, "_api"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r} in this TensorRT version")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in object.__getattribute__(self, "_api"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r} in this TensorRT version")
        if name in object.__getattribute__(self, "_readonly"):
            raise AttributeError(f"{type(self).__name__!s}.{name} is read-only")
        object.__setattr__(self, name, value)


class PybindMeta(type):
    """pybind11 refuses a Python subclass instance whose __init__ skipped the bound base's __init__."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        if not obj.__dict__.get("_pybind_initialised"):
            raise TypeError(f"tensorrt.tensorrt.{cls.__mro__[1].__name__}.__init__() must be called when overriding __init__")
        return obj


class EnumValue:
    def __init__(self, enum, name, value):
        self.enum, self.name, self.value = enum, name, value

    def __int__(self):
        return self.value

    def __index__(self):
        return self.value

    def __eq__(self, other):
        return isinstance(other, EnumValue) and other.enum == self.enum and other.value == self.value

    def __hash__(self):
        return hash((self.enum, self.value))

    def __repr__(self):
        return f"{self.enum}.{self.name}"

    __str__ = __repr__


def make_enum(name, members):
    ns = types.SimpleNamespace()
    for i, m in enumerate(members):
        setattr(ns, m, EnumValue(name, m, i))
    return ns


# -- version tables (names verified on NVIDIA/TensorRT release branches) ---------------------------

V85, V86, V10, V11 = "8.5.2.2", "8.6.2.3", "10.3.0.30", "11.1.0.7"
VERSIONS = (V85, V86, V10, V11)


def _major_minor(v):
    a, b = v.split(".")[:2]
    return int(a), int(b)


def tables(version):
    mm = _major_minor(version)
    weak = mm[0] < 11
    t = {}
    t["BuilderFlag"] = (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"] if weak else []) + [
        "GPU_FALLBACK", "DEBUG", "REFIT", "TF32", "DISABLE_TIMING_CACHE", "SPARSE_WEIGHTS", "DIRECT_IO"] + (
        ["STRICT_TYPES"] if mm[0] == 8 else []) + (["BF16", "FP8", "VERSION_COMPATIBLE"] if mm[0] >= 10 and weak else [])
    t["NetworkDefinitionCreationFlag"] = (["EXPLICIT_BATCH"] if mm[0] < 11 else []) + (["STRONGLY_TYPED"] if mm[0] >= 9 else [])
    layer_types = ["CONVOLUTION", "ACTIVATION", "POOLING", "SCALE", "SOFTMAX", "CONCATENATION", "ELEMENTWISE", "UNARY",
                   "SHUFFLE", "REDUCE", "GATHER", "MATRIX_MULTIPLY", "CONSTANT", "IDENTITY", "SLICE", "SHAPE", "RESIZE",
                   "QUANTIZE", "DEQUANTIZE", "SELECT", "FILL"]
    if mm >= (8, 6):
        layer_types += ["NORMALIZATION", "CAST"]
    t["LayerType"] = layer_types
    t["DataType"] = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8"] + (["INT64", "BF16"] if mm[0] >= 10 else [])
    t["builder"] = {"create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
                    "num_DLA_cores", "logger"} | ({"build_engine", "max_batch_size"} if mm[0] == 8 else set())
    t["config"] = {"set_memory_pool_limit", "get_memory_pool_limit", "set_flag", "get_flag", "clear_flag",
                   "add_optimization_profile", "default_device_type", "DLA_core", "create_timing_cache",
                   "set_timing_cache", "get_timing_cache", "profiling_verbosity", "can_run_on_DLA", "get_device_type",
                   "set_device_type", "is_device_type_set", "reset_device_type"} | (
        {"int8_calibrator", "set_calibration_profile"} if weak else set()) | ({"max_workspace_size"} if mm[0] == 8 else set())
    t["layer"] = {"name", "type", "num_inputs", "num_outputs", "get_input", "get_output", "get_output_type"} | (
        {"precision", "precision_is_set", "set_output_type", "reset_precision", "output_type_is_set"} if weak else set())
    t["engine"] = {"num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
                   "get_tensor_profile_shape", "create_execution_context", "num_optimization_profiles", "name"} | (
        {"num_bindings", "binding_is_input", "get_binding_shape", "get_profile_shape", "max_batch_size"} if mm[0] == 8 else set())
    t["context"] = {"set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape", "engine"} | (
        {"execute_async_v2", "execute_async", "set_binding_shape"} if mm[0] == 8 else set())
    t["parser_error"] = {"code", "desc", "node"} | ({"file", "line", "func"} if mm[0] == 8 else {"node_name", "node_operator"} if mm[0] >= 11 else set())
    return t


ONNX_TO_LAYER = {"Conv": "CONVOLUTION", "Relu": "ACTIVATION", "AveragePool": "POOLING", "MaxPool": "POOLING",
                 "Softmax": "SOFTMAX", "Concat": "CONCATENATION", "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE",
                 "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE", "Pow": "ELEMENTWISE", "Sqrt": "UNARY",
                 "Transpose": "SHUFFLE", "Reshape": "SHUFFLE", "ReduceMean": "REDUCE", "ReduceMax": "REDUCE",
                 "Gather": "GATHER", "MatMul": "MATRIX_MULTIPLY", "Resize": "RESIZE", "Cast": "IDENTITY",
                 "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "LayerNormalization": "NORMALIZATION",
                 "Constant": "CONSTANT", "Identity": "IDENTITY"}
# Further standard ONNX ops real exports contain (the real parser imports all of them).
for _op, _lt in {"Clip": "ACTIVATION", "Sigmoid": "ACTIVATION", "HardSigmoid": "ACTIVATION", "Tanh": "ACTIVATION",
                 "Erf": "UNARY", "Neg": "UNARY", "Exp": "UNARY", "Abs": "UNARY", "Reciprocal": "UNARY",
                 "Slice": "SLICE", "Split": "SLICE", "Shape": "SHAPE", "Unsqueeze": "SHUFFLE", "Squeeze": "SHUFFLE",
                 "Flatten": "SHUFFLE", "Expand": "SLICE", "Tile": "SLICE", "Where": "SELECT", "Equal": "ELEMENTWISE",
                 "Max": "ELEMENTWISE", "Min": "ELEMENTWISE", "Gemm": "MATRIX_MULTIPLY", "ReduceSum": "REDUCE",
                 "GlobalAveragePool": "REDUCE", "ConstantOfShape": "FILL", "Range": "FILL", "Einsum": "MATRIX_MULTIPLY",
                 "BatchNormalization": "SCALE", "Pad": "SLICE", "HardSwish": "ACTIVATION", "ReduceL2": "REDUCE"}.items():
    ONNX_TO_LAYER.setdefault(_op, _lt)

_ONNX_DT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.UINT8: "UINT8",
            onnx.TensorProto.INT8: "INT8", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64",
            onnx.TensorProto.BOOL: "BOOL"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_, "UINT8": np.uint8,
       "INT64": np.int64}


# -- fake cudart ---------------------------------------------------------------------------------
#
# Asynchronous like a GPU: every copy, engine run and event record is queued on its stream and runs
# only when something waits for it (cudaStreamSynchronize, cudaEventSynchronize, or a stream that
# needs it through cudaStreamWaitEvent). Host code that reads results without the right wait sees
# stale data; a stream that skips a cudaStreamWaitEvent runs before the work it depends on.
# ``schedule`` decides which streams run first when several could: "target_first" (the stream being
# waited for runs as soon as its own ordering allows: catches a missing wait on a producer) or
# "others_first" (every other stream runs as far as it may first: catches a missing wait before
# overwriting a buffer another stream still reads).
#
# Stricter than CUDA in one place: cudaFree/cudaFreeHost of memory that queued work still uses is
# refused with cudaErrorIllegalAddress (CUDA would block; the point is that the contexts and
# streams that use the memory are torn down around it, so the owner must synchronise first).

ERRORS = {"cudaSuccess": 0, "cudaErrorInvalidValue": 1, "cudaErrorInvalidResourceHandle": 400,
          "cudaErrorInsufficientDriver": 35, "cudaErrorNoDevice": 100, "cudaErrorNotReady": 600,
          "cudaErrorIllegalAddress": 700, "cudaErrorStreamCaptureInvalidated": 901}


class _Handle:
    _next = 0x1000

    def __init__(self, kind):
        _Handle._next += 16
        self.kind, self.id = kind, _Handle._next
        self.time = None  # events: when the last record ran
        self.pending = None  # events: the record op not yet run
        self.queue = []  # streams: ops in order
        self.capturing = None  # streams: op templates recorded while a capture is open

    def __int__(self):
        return self.id


class _Op:
    """One queued operation: ``run()`` does the work; ``ptrs`` are the addresses it touches;
    ``after`` is the event-record op a wait needs to have run."""

    def __init__(self, kind, run=None, ptrs=(), after=None, check=None, label=""):
        self.kind, self._run, self.ptrs, self.after, self.check, self.label = kind, run, tuple(ptrs), after, check, label
        self.done = False

    def ready(self):
        return self.after is None or self.after.done

    def copy(self):
        return _Op(self.kind, self._run, self.ptrs, self.after, self.check, self.label)


def make_cudart(gpu_name="NVIDIA Fake Orin", cc=(8, 7), devices=1, driver_version=12080, runtime_version=12080,
                schedule="target_first"):
    """cuda-python runtime stand-in with only names the real ``cuda.bindings.runtime`` has.

    ``driver_version``/``runtime_version``: what cudaDriverGetVersion/cudaRuntimeGetVersion report
    (12080 = CUDA 12.8); a runtime major newer than the driver's makes the device calls return
    cudaErrorInsufficientDriver, as bindings built for a newer CUDA do on an old driver.
    """
    assert schedule in ("target_first", "others_first")
    rt = types.ModuleType("cudart_standin")
    err = types.SimpleNamespace(**{k: EnumValue("cudaError_t", k, v) for k, v in ERRORS.items()})
    ok = err.cudaSuccess
    rt.cudaError_t = err
    rt.cudaMemcpyKind = make_enum("cudaMemcpyKind", ["cudaMemcpyHostToHost", "cudaMemcpyHostToDevice",
                                                      "cudaMemcpyDeviceToHost", "cudaMemcpyDeviceToDevice"])
    rt.cudaStreamCaptureMode = make_enum("cudaStreamCaptureMode", ["cudaStreamCaptureModeGlobal",
                                                                    "cudaStreamCaptureModeThreadLocal"])
    rt.cudaStreamNonBlocking = 1
    rt._device = {}  # ptr -> buffer (device allocations)
    rt._host = {}  # ptr -> buffer (pinned host allocations)
    rt._freed = {}  # ptr -> buffer, kept so a late op can be detected, never written through freed memory
    rt._calls = []
    rt._streams = {}
    rt._orphans = []  # ops of destroyed streams (CUDA still runs them)
    rt._graphs, rt._graph_execs = {}, {}  # live graphs / executable graphs by id
    rt._faults = []
    insufficient = runtime_version // 1000 > driver_version // 1000
    rt._schedule = schedule

    def alloc(table, n):
        buf = (ctypes.c_byte * n)()
        ptr = ctypes.addressof(buf)
        table[ptr] = buf
        return ptr

    def call(name, fn, device_call=True):
        def wrapper(*a):
            rt._calls.append(name)
            if insufficient and device_call:
                return (err.cudaErrorInsufficientDriver,) + ((0,) if name in _RETURNS_VALUE else ())
            return fn(*a)
        setattr(rt, name, wrapper)

    _RETURNS_VALUE = {"cudaGetDeviceCount", "cudaGetDevice", "cudaGetDeviceProperties", "cudaMalloc", "cudaMallocHost",
                      "cudaStreamCreateWithFlags", "cudaStreamCreate", "cudaEventCreate", "cudaEventElapsedTime",
                      "cudaStreamEndCapture", "cudaGraphInstantiate"}

    call("cudaDriverGetVersion", lambda: (ok, driver_version), device_call=False)
    call("cudaRuntimeGetVersion", lambda: (ok, runtime_version), device_call=False)
    call("cudaGetDeviceCount", lambda: (ok, devices) if devices else (err.cudaErrorNoDevice, 0))
    call("cudaGetDevice", lambda: (ok, 0))
    call("cudaGetDeviceProperties", lambda i: (ok, types.SimpleNamespace(name=gpu_name.encode() + b"\0" * 4, major=cc[0], minor=cc[1])))
    call("cudaGetErrorName", lambda e: (ok, str(e.name if isinstance(e, EnumValue) else e).encode()), device_call=False)
    call("cudaMalloc", lambda n: (ok, alloc(rt._device, n)))
    call("cudaMallocHost", lambda n: (ok, alloc(rt._host, n)))

    # -- the queue machinery ------------------------------------------------------------------
    def owner(ptr):
        """'live', 'freed' or None (memory the stand-in did not allocate, e.g. a numpy array)."""
        for table, what in ((rt._device, "live"), (rt._host, "live"), (rt._freed, "freed")):
            for base, buf in table.items():
                if base <= ptr < base + ctypes.sizeof(buf):
                    return what
        return None

    def execute(op):
        bad = [p for p in op.ptrs if owner(int(p)) == "freed"]
        if bad:
            rt._faults.append(f"{op.label} touched freed memory {bad[0]:#x}")
            op.done = True
            return err.cudaErrorIllegalAddress
        if op._run is not None:
            op._run()
        op.done = True
        return ok

    def queues():
        return [s.queue for s in rt._streams.values()] + [rt._orphans]

    def step(target):
        """Run one ready head-of-queue op, preferring ``target`` or the others per the schedule."""
        others = [q for q in queues() if q is not target and q]
        order = ([target] + others) if rt._schedule == "target_first" else (others + [target])
        for q in order:
            if q and q[0].ready():
                return execute(q.pop(0))
        return None  # nothing can run: a wait on work that never comes

    def drain(target, finished):
        while not finished():
            res = step(target)
            if res is None:
                return err.cudaErrorNotReady
            if res != ok:
                return res
        return ok

    def enqueue(stream, op):
        s = rt._streams.get(int(stream)) if stream is not None else None
        if s is None:  # the legacy default stream: synchronous with everything
            res = drain([], lambda: not any(queues()))
            return res if res != ok else execute(op)
        if s.capturing is not None:
            s.capturing.append(op)
            return ok
        s.queue.append(op)
        return ok

    rt._enqueue = enqueue  # the fake TensorRT queues engine runs through this

    def pending_uses(base, size):
        return any(base <= int(p) < base + size for q in queues() for op in q for p in op.ptrs)

    def free(table, p):
        buf = table.get(p)
        if buf is None:
            return (err.cudaErrorInvalidValue,)
        if pending_uses(p, ctypes.sizeof(buf)):
            rt._faults.append(f"freed {p:#x} while queued work still uses it")
            return (err.cudaErrorIllegalAddress,)
        rt._freed[p] = table.pop(p)
        return (ok,)

    call("cudaFree", lambda p: free(rt._device, p))
    call("cudaFreeHost", lambda p: free(rt._host, p))

    def memcpy(dst, src, n, kind, stream):
        if not isinstance(kind, EnumValue) or kind.enum != "cudaMemcpyKind":
            return (err.cudaErrorInvalidValue,)
        op = _Op("work", lambda: ctypes.memmove(int(dst), int(src), int(n)), (dst, src), label=f"memcpy {kind.name}")
        return (enqueue(stream, op),)

    call("cudaMemcpyAsync", memcpy)

    def stream_create(flags=0):
        s = _Handle("stream")
        rt._streams[int(s)] = s
        return (ok, s)

    def stream_destroy(s):
        st = rt._streams.pop(int(s), None)
        if st is None:
            return (err.cudaErrorInvalidResourceHandle,)
        rt._orphans.extend(st.queue)  # CUDA finishes the work of a destroyed stream
        return (ok,)

    def stream_sync(s):
        st = rt._streams.get(int(s))
        if st is None:
            return (err.cudaErrorInvalidResourceHandle,)
        return (drain(st.queue, lambda: not st.queue),)

    call("cudaStreamCreateWithFlags", stream_create)
    call("cudaStreamCreate", lambda: stream_create(0))
    call("cudaStreamDestroy", stream_destroy)
    call("cudaStreamSynchronize", stream_sync)
    call("cudaEventCreate", lambda: (ok, _Handle("event")))
    call("cudaEventDestroy", lambda e: (ok,))

    def record(e, s):
        def run():
            e.time = time.perf_counter()
            if e.pending is op:
                e.pending = None
        op = _Op("record", run, label="event record")
        st = rt._streams.get(int(s))
        if st is not None and st.capturing is None:
            e.pending = op
            op.queue = st.queue
        return (enqueue(s, op),)

    def event_sync(e):
        op = e.pending
        if op is None:
            return (ok,)
        return (drain(getattr(op, "queue", []), lambda: op.done),)

    def wait_event(s, e, flags):
        return (enqueue(s, _Op("wait", after=e.pending, label="stream wait event")),)

    def elapsed(a, b):
        if a.pending is not None or b.pending is not None:
            return (err.cudaErrorNotReady, 0.0)  # as CUDA: an event whose work has not run yet
        if a.time is None or b.time is None:
            return (err.cudaErrorInvalidResourceHandle, 0.0)
        return (ok, (b.time - a.time) * 1e3)

    call("cudaEventRecord", record)
    call("cudaEventSynchronize", event_sync)
    call("cudaStreamWaitEvent", wait_event)
    call("cudaEventElapsedTime", elapsed)

    # -- graphs: capture records op templates; a launch queues fresh copies of them -------------
    def begin(s, mode):
        st = rt._streams[int(s)]
        if st.capturing is not None:
            return (err.cudaErrorInvalidValue,)
        st.capturing = []
        return (ok,)

    def end(s):
        st = rt._streams[int(s)]
        if st.capturing is None:
            return (err.cudaErrorInvalidValue, None)
        g = _Handle("graph")
        g.ops, st.capturing = list(st.capturing), None
        rt._graphs[int(g)] = g
        return (ok, g)

    def instantiate(g, flags):
        if int(g) not in rt._graphs:
            return (err.cudaErrorInvalidValue, None)
        ge = _Handle("graphExec")
        ge.ops = [op.copy() for op in g.ops]
        rt._graph_execs[int(ge)] = ge
        return (ok, ge)

    def launch(ge, s):
        if int(ge) not in rt._graph_execs:
            return (err.cudaErrorInvalidResourceHandle,)
        for op in ge.ops:
            problem = op.check() if op.check is not None else None
            if problem:
                rt._faults.append(problem)
                return (err.cudaErrorInvalidValue,)
        for op in ge.ops:
            res = enqueue(s, op.copy())
            if res != ok:
                return (res,)
        return (ok,)

    call("cudaStreamBeginCapture", begin)
    call("cudaStreamEndCapture", end)
    call("cudaGraphInstantiate", instantiate)
    call("cudaGraphLaunch", launch)
    call("cudaGraphExecDestroy", lambda ge: (ok,) if rt._graph_execs.pop(int(ge), None) else (err.cudaErrorInvalidValue,))
    call("cudaGraphDestroy", lambda g: (ok,) if rt._graphs.pop(int(g), None) else (err.cudaErrorInvalidValue,))
    return rt


# -- fake tensorrt -------------------------------------------------------------------------------


def make_tensorrt(version, cudart=None):
    """A fake ``tensorrt`` module for ``version`` (one of VERSIONS)."""
    mm = _major_minor(version)
    weak = mm[0] < 11
    tab = tables(version)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt._calls = []
    trt._cudart = cudart
    trt._built = []  # (network flags, config state) per build
    trt._deserialized = []  # per engine loaded: its DLA core and the runtime's DLA_core
    trt._kernel_seconds = 0.0  # extra time each engine run takes (for timing tests)
    trt._refuse_capture = False  # enqueues under stream capture fail (e.g. a plugin that is not graph-safe)
    for enum_name in ("BuilderFlag", "NetworkDefinitionCreationFlag", "LayerType", "DataType"):
        setattr(trt, enum_name, make_enum(enum_name, tab[enum_name]))
    trt.MemoryPoolType = make_enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM"])
    trt.DeviceType = make_enum("DeviceType", ["GPU", "DLA"])
    trt.TensorIOMode = make_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.ProfilingVerbosity = make_enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED", "NONE"])
    DT = trt.DataType

    def nptype(dt):
        return _NP[dt.name]

    trt.nptype = nptype

    sev = make_enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

    class ILogger(metaclass=PybindMeta):
        Severity = sev

        def __init__(self):
            object.__setattr__(self, "_pybind_initialised", True)

        def log(self, severity, msg):
            raise NotImplementedError  # pure virtual in the real binding too

    for s in ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"):
        setattr(ILogger, s, getattr(sev, s))

    class Logger(ILogger):
        def __init__(self, min_severity=sev.WARNING):
            ILogger.__init__(self)
            self.min_severity = min_severity

        def log(self, severity, msg):
            pass

    trt.ILogger, trt.Logger = ILogger, Logger

    # TensorRT keeps ONE logger per process: the first one given to a Builder or Runtime is used by
    # all of them while any is alive; a different logger passed meanwhile is ignored with a warning.
    trt._logger = None
    trt._logger_holders = 0
    trt._logger_warnings = []

    def _hold_logger(obj, logger):
        assert isinstance(logger, ILogger), "needs an ILogger"
        if trt._logger_holders == 0:
            trt._logger = logger
        elif logger is not trt._logger:
            msg = ("The logger passed into createInferBuilder differs from one already provided for an existing builder, "
                   "runtime, or refitter. Uses of the global logger, returned by nvinfer1::getLogger(), will return the existing value.")
            trt._logger_warnings.append(msg)
            trt._logger.log(ILogger.WARNING, msg)
        trt._logger_holders += 1
        weakref.finalize(obj, _release_logger)

    def _release_logger():
        trt._logger_holders -= 1
        if trt._logger_holders == 0:
            trt._logger = None

    def _log(_given, severity, msg):
        trt._logger.log(severity, msg)  # the process logger, whatever this builder was given

    # tensors and layers
    class Tensor(Strict):
        _api = frozenset({"name", "shape", "dtype"})
        _readonly = frozenset({"dtype"} if mm[0] >= 11 else set())

        def __init__(self, name, shape, dtype):
            self._set(name, shape, dtype)

        def _set(self, name, shape, dtype):
            object.__setattr__(self, "name", name)
            object.__setattr__(self, "shape", shape)
            object.__setattr__(self, "dtype", dtype)

    class Layer(Strict):
        _api = frozenset(tab["layer"])
        _readonly = frozenset({"type"})

        def __init__(self, name, ltype, inputs, outputs, op=None):
            object.__setattr__(self, "_op", op)  # the ONNX op the parser made it from
            object.__setattr__(self, "name", name)
            object.__setattr__(self, "type", ltype)
            object.__setattr__(self, "_inputs", inputs)
            object.__setattr__(self, "_outputs", outputs)
            object.__setattr__(self, "_precision", DT.FLOAT)
            object.__setattr__(self, "_precision_set", False)
            object.__setattr__(self, "_output_types", {})

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_input(self, index):
            return self._inputs[index]

        def get_output(self, index):
            return self._outputs[index]

        def _get_precision(self):
            return self._precision

        def _set_precision(self, dt):
            object.__setattr__(self, "_precision", dt)
            object.__setattr__(self, "_precision_set", True)

        precision = property(_get_precision, _set_precision)
        precision_is_set = property(lambda self: self._precision_set)

        def set_output_type(self, index, dtype):
            if not 0 <= index < len(self._outputs):
                raise IndexError(index)
            self._output_types[index] = dtype

        def get_output_type(self, index):
            return self._output_types.get(index, DT.FLOAT)

    class Network(Strict):
        _api = frozenset({"num_layers", "get_layer", "num_inputs", "get_input", "num_outputs", "get_output", "name"})

        def __init__(self, flags):
            object.__setattr__(self, "_flags", flags)
            object.__setattr__(self, "_layers", [])
            object.__setattr__(self, "_inputs", [])
            object.__setattr__(self, "_outputs", [])
            object.__setattr__(self, "_onnx", None)
            object.__setattr__(self, "name", "network")

        num_layers = property(lambda self: len(self._layers))
        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))

        def get_layer(self, index):
            return self._layers[index]

        def get_input(self, index):
            return self._inputs[index]

        def get_output(self, index):
            return self._outputs[index]

    def _flag_set(flags, member_name):
        member = getattr(trt.NetworkDefinitionCreationFlag, member_name, None)
        return member is not None and bool(flags & (1 << int(member)))

    class ParserError(Strict):
        _api = frozenset(tab["parser_error"])

        def __init__(self, node, desc):
            object.__setattr__(self, "_node", node)
            object.__setattr__(self, "_desc", desc)

        def code(self):
            return 8

        def desc(self):
            return self._desc

        def node(self):
            return self._node

        def file(self):
            return "ModelImporter.cpp"

        def line(self):
            return 0

        def func(self):
            return "parse"

        def node_name(self):
            return ""

        def node_operator(self):
            return ""

    class OnnxParser(Strict):
        # supports_model was removed in 11.0 (checked on the real 11.1 bindings).
        _api = frozenset({"parse", "parse_from_file", "num_errors", "get_error", "clear_errors"} | ({"supports_model"} if weak else set()))

        def __init__(self, network, logger):
            object.__setattr__(self, "_network", network)
            object.__setattr__(self, "_logger", logger)
            object.__setattr__(self, "_errors", [])

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, index):
            return self._errors[index]

        def clear_errors(self):
            self._errors.clear()

        def parse(self, model, path=None):
            return self._parse_model(onnx.load_from_string(model))

        def parse_from_file(self, model):
            path = model  # the real keyword name; a path, not an ONNX model
            trt._calls.append(("parse_from_file", path))
            try:
                model = onnx.load(path)
            except Exception as e:
                self._errors.append(ParserError(-1, f"cannot read {path}: {e}"))
                return False
            return self._parse_model(model)

        def _parse_model(self, model):
            net = self._network
            if mm[0] < 10 and not _flag_set(net._flags, "EXPLICIT_BATCH"):
                self._errors.append(ParserError(-1, "network must have explicit batch dimensions (EXPLICIT_BATCH)"))
                return False
            for k, node in enumerate(model.graph.node):
                if node.op_type == "LayerNormalization" and mm < (8, 6):
                    self._errors.append(ParserError(k, "No importer registered for op: LayerNormalization"))
                    return False
                if node.op_type not in ONNX_TO_LAYER:
                    self._errors.append(ParserError(k, f"No importer registered for op: {node.op_type}"))
                    return False
            for vi in model.graph.input:
                tt = vi.type.tensor_type
                shape = tuple(d.dim_value if d.dim_value else -1 for d in tt.shape.dim)
                net._inputs.append(Tensor(vi.name, shape, getattr(DT, _ONNX_DT[tt.elem_type])))
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
            for vi in inferred.graph.output:
                tt = vi.type.tensor_type
                shape = tuple(d.dim_value if d.dim_value else -1 for d in tt.shape.dim)
                net._outputs.append(Tensor(vi.name, shape, getattr(DT, _ONNX_DT[tt.elem_type])))
            for k, node in enumerate(model.graph.node):
                lt = getattr(trt.LayerType, ONNX_TO_LAYER[node.op_type])
                outs = [Tensor(o, (), DT.FLOAT) for o in node.output]
                net._layers.append(Layer(node.name or f"node_{k}", lt, [Tensor(i, (), DT.FLOAT) for i in node.input], outs, node.op_type))
                if node.op_type == "Resize":  # the parser adds helper layers named <node>_<n>
                    net._layers.append(Layer(f"{node.name}_1", trt.LayerType.SHAPE, [], [Tensor(f"{node.name}_shape", (), DT.INT32)]))
            object.__setattr__(net, "_onnx", model.SerializeToString())
            return True

    trt.OnnxParser = OnnxParser

    class Profile(Strict):
        _api = frozenset({"set_shape", "get_shape"})

        def __init__(self):
            object.__setattr__(self, "_shapes", {})

        def set_shape(self, input, min, opt, max):  # noqa: A002 (real keyword names)
            self._shapes[input] = (tuple(min), tuple(opt), tuple(max))

        def get_shape(self, input):
            return self._shapes[input]

    def _profile_valid(profile):
        """IOptimizationProfile::isValid: some shape set, each with min <= opt <= max per dimension."""
        return bool(profile._shapes) and all(
            len(lo) == len(opt) == len(hi) and all(0 <= a <= b <= c for a, b, c in zip(lo, opt, hi))
            for lo, opt, hi in profile._shapes.values())

    class TimingCache(Strict):
        _api = frozenset({"serialize", "combine", "reset"})

        def __init__(self, data):
            object.__setattr__(self, "_data", data)

        def serialize(self):
            return f"FAKE-TIMING-CACHE {version} {len(trt._built)}".encode()

    class Config(Strict):
        _api = frozenset(tab["config"])

        def __init__(self):
            d = object.__setattr__
            d(self, "_flags", set())
            d(self, "_pools", {})
            d(self, "_profiles", [])
            d(self, "_calib_profile", None)
            d(self, "_calibrator", None)
            d(self, "_timing_cache", None)
            d(self, "_device_types", {})
            d(self, "default_device_type", trt.DeviceType.GPU)
            d(self, "DLA_core", -1)
            d(self, "profiling_verbosity", trt.ProfilingVerbosity.LAYER_NAMES_ONLY)

        def set_memory_pool_limit(self, pool, pool_size):
            self._pools[pool] = pool_size

        def get_memory_pool_limit(self, pool):
            return self._pools.get(pool, 0)

        def set_flag(self, flag):
            assert isinstance(flag, EnumValue) and flag.enum == "BuilderFlag"
            self._flags.add(flag.name)

        def clear_flag(self, flag):
            self._flags.discard(flag.name)

        def get_flag(self, flag):
            return flag.name in self._flags

        def add_optimization_profile(self, profile):
            if not _profile_valid(profile):
                return -1  # TensorRT: the profile is rejected (and not added)
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def _get_cal(self):
            return self._calibrator

        def _set_cal(self, c):
            object.__setattr__(self, "_calibrator", c)

        int8_calibrator = property(_get_cal, _set_cal)

        def set_calibration_profile(self, profile):
            if not _profile_valid(profile):
                return False
            object.__setattr__(self, "_calib_profile", profile)
            return True

        def create_timing_cache(self, serialized_timing_cache):
            return TimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache._data and not cache._data.startswith(f"FAKE-TIMING-CACHE {version} ".encode()) and not ignore_mismatch:
                return False
            object.__setattr__(self, "_timing_cache", cache)
            return True

        def get_timing_cache(self):
            return self._timing_cache

        def set_device_type(self, layer, device_type):
            self._device_types[id(layer)] = device_type

        def get_device_type(self, layer):
            return self._device_types.get(id(layer), self.default_device_type)

        def is_device_type_set(self, layer):
            return id(layer) in self._device_types

        def reset_device_type(self, layer):
            self._device_types.pop(id(layer), None)

        def can_run_on_DLA(self, layer):
            return _dla_capable(layer)

    # Layer kinds the stand-in's DLA runs (a convolutional subset); anything else falls back.
    DLA_TYPES = {"CONVOLUTION", "ACTIVATION", "POOLING", "SCALE", "ELEMENTWISE", "CONCATENATION", "SOFTMAX"}

    def _dla_capable(layer):
        return layer.type.name in DLA_TYPES

    class Builder(Strict):
        _api = frozenset(tab["builder"])
        _readonly = frozenset({"logger"})

        def __init__(self, logger):
            assert isinstance(logger, ILogger), "Builder needs an ILogger"
            object.__setattr__(self, "logger", logger)
            _hold_logger(self, logger)

        num_DLA_cores = property(lambda self: 2)

        def create_network(self, flags=0):
            trt._calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_engine(self, network, config):  # 8.x only (name hidden elsewhere)
            raise RuntimeError("stand-in: build_engine is deprecated; use build_serialized_network")

        def build_serialized_network(self, network, config):
            return _build(self, network, config)

    def _build(builder, network, config):
        log = builder.logger
        strongly = (not weak) or _flag_set(network._flags, "STRONGLY_TYPED")
        model = onnx.load_from_string(network._onnx)
        has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        if strongly and config._flags & {"FP16", "INT8"}:
            _log(log, ILogger.ERROR, "precision flags are not allowed on strongly typed networks")
            return None
        if strongly and any(layer._precision_set for layer in network._layers):
            _log(log, ILogger.ERROR, "layer precision is not allowed on strongly typed networks")
            return None
        if not config._profiles:
            _log(log, ILogger.ERROR, "network has dynamic shapes but no optimization profile")
            return None
        prof = config._profiles[0]
        for t in network._inputs:
            if t.name not in prof._shapes:
                _log(log, ILogger.ERROR, f"no profile shape for input {t.name}")
                return None
            for s in prof._shapes[t.name]:
                if len(s) != len(t.shape) or any(d >= 0 and d != x for d, x in zip(t.shape, s)):
                    _log(log, ILogger.ERROR, f"profile shape {s} does not fit {t.name}{t.shape}")
                    return None
        calib_info = None
        if "INT8" in config._flags and not has_qdq:
            cal = config._calibrator
            if cal is None:
                _log(log, ILogger.ERROR, "INT8 without calibrator or Q/DQ: missing dynamic ranges")
                return None
            calib_info = _calibrate(cal, network, config, log)
            if calib_info is None:
                return None
        dla = config.default_device_type == trt.DeviceType.DLA
        if dla and "GPU_FALLBACK" not in config._flags:
            _log(log, ILogger.ERROR, "DLA without GPU_FALLBACK: unsupported layers")
            return None
        if dla and any(len(set(shapes)) != 1 for shapes in prof._shapes.values()):
            _log(log, ILogger.ERROR, "DLA does not support dynamic shapes: the profile must have min = opt = max")
            return None
        for t in network._inputs:
            if t.dtype == DT.UINT8:
                feeds = [layer for layer in network._layers if any(i.name == t.name for i in layer._inputs)]
                if any(layer._op != "Cast" for layer in feeds):
                    _log(log, ILogger.ERROR, f"UINT8 network input {t.name} must feed a Cast layer directly")
                    return None
        header = {
            "version": version, "flags": sorted(config._flags), "net_flags": network._flags, "strongly_typed": strongly,
            "profile": {k: [list(x) for x in v] for k, v in prof._shapes.items()},
            "pinned": [layer.name for layer in network._layers if layer._precision_set],
            "pinned_precision": {layer.name: layer._precision.name for layer in network._layers if layer._precision_set},
            "output_types": {layer.name: sorted(layer._output_types) for layer in network._layers if layer._output_types},
            "dla": config.DLA_core if dla else None,
            "dla_gpu_fallback": [layer.name for layer in network._layers if dla and not _dla_capable(layer)],
            "workspace": config._pools.get(trt.MemoryPoolType.WORKSPACE), "calibration": calib_info,
            "qdq": has_qdq, "timing_cache": config._timing_cache is not None,
            "inputs": [(t.name, list(t.shape), t.dtype.name) for t in network._inputs],
            "outputs": [(t.name, list(t.shape), t.dtype.name) for t in network._outputs],
        }
        trt._built.append(header)
        return b"FAKEPLAN\n" + json.dumps(header).encode() + b"\n" + network._onnx

    def _py_callback(cal, name, on_error, *args):
        """What pyInt8.cpp does around each Python override: an exception is printed to stderr
        ("[ERROR] Exception caught in get_batch(): ...") and a default returned (false / nullptr)."""
        try:
            return getattr(cal, name)(*args)
        except Exception as e:  # noqa: BLE001
            print(f"[ERROR] Exception caught in {name}(): {e}", file=sys.stderr)
            return on_error

    def _calibrate(cal, network, config, log):
        inp = network._inputs[0]
        cached = _py_callback(cal, "read_calibration_cache", None)
        if cached:
            return {"from_cache": True, "batches": 0}
        shape = config._calib_profile._shapes[inp.name][1] if config._calib_profile else None
        if shape is None:
            _log(log, ILogger.ERROR, "explicit batch calibration needs a calibration profile")
            return None
        count, amax = 0, 0.0
        n = int(np.prod(shape))
        dtype = _NP[inp.dtype.name]
        while True:
            ptrs = _py_callback(cal, "get_batch", False, [inp.name])
            if not ptrs:  # None (done) or False (the callback raised): calibration ends either way
                break
            buf = (ctypes.c_byte * (n * np.dtype(dtype).itemsize)).from_address(int(ptrs[0]))
            data = np.frombuffer(buf, dtype=dtype).astype(np.float64)
            amax = max(amax, float(np.abs(data).max()))
            count += 1
        if count == 0:
            _log(log, ILogger.ERROR, "calibrator gave no batches")
            return None
        scale = np.float32(amax / 127.0)
        bits = np.frombuffer(scale.tobytes(), dtype=np.uint32)[0]
        text = f"TRT-{mm[0]}{mm[1]:01d}01-EntropyCalibration2\n{inp.name}: {bits:x}\n"
        _py_callback(cal, "write_calibration_cache", None, memoryview(text.encode()))
        return {"from_cache": False, "batches": count, "amax": amax}

    trt.Builder = Builder

    class Engine(Strict):
        _api = frozenset(tab["engine"])
        _readonly = frozenset({"name", "num_bindings", "max_batch_size"})

        def __init__(self, header, onnx_bytes):
            object.__setattr__(self, "_h", header)
            object.__setattr__(self, "_onnx", onnx_bytes)
            io = [(n, s, d, True) for n, s, d in header["inputs"]] + [(n, s, d, False) for n, s, d in header["outputs"]]
            object.__setattr__(self, "_io", io)
            object.__setattr__(self, "name", "engine")
            object.__setattr__(self, "_ort", None)

        num_io_tensors = property(lambda self: len(self._io))
        num_optimization_profiles = property(lambda self: 1)

        def get_tensor_name(self, index):
            return self._io[index][0]

        def _find(self, name):
            for e in self._io:
                if e[0] == name:
                    return e
            raise KeyError(name)

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if self._find(name)[3] else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return tuple(self._find(name)[1])

        def get_tensor_dtype(self, name):
            return getattr(DT, self._find(name)[2])

        def get_tensor_profile_shape(self, name, profile_index):
            return [tuple(s) for s in self._h["profile"][name]]

        def create_execution_context(self):
            return Context(self)

        def _session(self):
            import onnxruntime as ort

            if self._ort is None:
                object.__setattr__(self, "_ort", ort.InferenceSession(self._onnx, providers=["CPUExecutionProvider"]))
            return self._ort

    class Context(Strict):
        """Enqueues snapshot the shapes and addresses set at that moment (as TensorRT reads them at
        enqueue time). Under stream capture an enqueue needs a plain enqueue with the same shapes
        first (TensorRT does its shape-dependent setup there); a captured graph is only valid while
        the context keeps the shapes it was captured with."""

        _api = frozenset(tab["context"])
        _readonly = frozenset({"engine"})

        def __init__(self, engine):
            object.__setattr__(self, "engine", engine)
            object.__setattr__(self, "_shapes", {})
            object.__setattr__(self, "_addr", {})
            object.__setattr__(self, "_runs", 0)
            object.__setattr__(self, "_generation", 0)  # bumped whenever an input shape changes
            object.__setattr__(self, "_warm", None)  # generation of the last plain enqueue

        def set_input_shape(self, name, shape):
            mn, _, mx = self.engine.get_tensor_profile_shape(name, 0)
            shape = tuple(int(x) for x in shape)
            if len(shape) != len(mn) or any(not (a <= s <= b) for a, s, b in zip(mn, shape, mx)):
                return False
            if self._shapes.get(name) != shape:
                object.__setattr__(self, "_generation", self._generation + 1)
            self._shapes[name] = shape
            return True

        def set_tensor_address(self, name, memory):
            self.engine._find(name)
            self._addr[name] = int(memory)
            return True

        def get_tensor_shape(self, name):
            e = self.engine._find(name)
            if e[3]:
                return self._shapes.get(name, tuple(e[1]))
            batch = next(iter(self._shapes.values()))[0] if self._shapes else -1
            return tuple(batch if d < 0 else d for d in e[1])

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int) and stream_handle != 0, "use a non-default stream handle (int)"
            for n, _, _, is_in in self.engine._io:
                if n not in self._addr:
                    return False
                if is_in and n not in self._shapes:
                    return False
            shapes, addr, gen = dict(self._shapes), dict(self._addr), self._generation
            run = lambda: self._run(shapes, addr)  # noqa: E731
            if cudart is None:  # pycuda tests: queued on the fake pycuda stream with this handle
                if not fake_pycuda.enqueue(stream_handle, run, list(addr.values())):
                    run()  # no stand-in stream (a test driving the engine directly)
                return True
            s = cudart._streams.get(stream_handle)
            capturing = s is not None and s.capturing is not None
            if capturing and (self._warm != gen or trt._refuse_capture):
                return False  # real TensorRT: the capture is invalidated by non-capturable setup work
            if not capturing:
                object.__setattr__(self, "_warm", gen)

            def still_valid():
                if self._generation != gen:
                    return (f"{self.engine.name}: CUDA graph replayed after its execution context changed input shapes "
                            f"(TensorRT: undefined behaviour; use one context per graphed shape)")
                return None

            op = _Op("work", run, list(addr.values()), check=still_valid if capturing else None, label="execute_async_v3")
            cudart._enqueue(s if s is not None else None, op)
            return True

        def _run(self, shapes, addr):
            feeds = {}
            for n, _, d, is_in in self.engine._io:
                if is_in:
                    shape = shapes[n]
                    dt = np.dtype(_NP[d])
                    buf = (ctypes.c_byte * (int(np.prod(shape)) * dt.itemsize)).from_address(addr[n])
                    feeds[n] = np.frombuffer(buf, dtype=dt).reshape(shape).copy()
            if trt._kernel_seconds:
                time.sleep(trt._kernel_seconds)
            outs = self.engine._session().run(None, feeds)
            for (n, _, d, is_in), val in zip([e for e in self.engine._io if not e[3]], outs):
                val = np.ascontiguousarray(val.astype(_NP[d]))
                ctypes.memmove(addr[n], val.ctypes.data, val.nbytes)
            object.__setattr__(self, "_runs", self._runs + 1)

    class Runtime(Strict):
        _api = frozenset({"deserialize_cuda_engine", "DLA_core", "num_DLA_cores", "engine_host_code_allowed"} if mm >= (8, 6)
                         else {"deserialize_cuda_engine", "DLA_core", "num_DLA_cores"})

        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            object.__setattr__(self, "DLA_core", 0)
            _hold_logger(self, logger)

        num_DLA_cores = property(lambda self: 2)

        def deserialize_cuda_engine(self, serialized_engine):
            serialized_engine = bytes(serialized_engine)
            if not serialized_engine.startswith(b"FAKEPLAN\n"):
                return None
            _, header, rest = serialized_engine.split(b"\n", 2)
            h = json.loads(header)
            if h["version"] != version:
                _log(None, ILogger.ERROR, f"plan was built by TensorRT {h['version']}, this is {version}")
                return None  # real TensorRT refuses plans from other versions
            if h["dla"] is not None and self.DLA_core != h["dla"]:
                # Stricter than TensorRT, which would run it on whichever core the runtime names.
                _log(None, ILogger.ERROR, f"engine was built for DLA core {h['dla']}, runtime.DLA_core is {self.DLA_core}")
                return None
            trt._deserialized.append({"dla": h["dla"], "runtime_DLA_core": self.DLA_core})
            return Engine(h, rest)

    trt.Runtime = Runtime

    if weak:
        class IInt8Calibrator(metaclass=PybindMeta):
            def __init__(self):
                object.__setattr__(self, "_pybind_initialised", True)

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            def get_algorithm(self):
                return "ENTROPY_CALIBRATION_2"

        trt.IInt8Calibrator = IInt8Calibrator
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (IInt8Calibrator,), {})
    # Each stand-in class under the name of the real class it stands for (the real module's names are
    # checked against these in tests/test_trt_standin_conformance.py).
    trt._classes = {"ITensor": Tensor, "ILayer": Layer, "INetworkDefinition": Network, "ParserError": ParserError,
                    "OnnxParser": OnnxParser, "IOptimizationProfile": Profile, "ITimingCache": TimingCache,
                    "IBuilderConfig": Config, "Builder": Builder, "ICudaEngine": Engine, "IExecutionContext": Context,
                    "Runtime": Runtime, "ILogger": ILogger, "Logger": Logger}
    if weak:
        trt._classes.update({"IInt8Calibrator": IInt8Calibrator, "IInt8EntropyCalibrator2": IInt8EntropyCalibrator2})
    return trt
