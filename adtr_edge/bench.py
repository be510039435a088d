"""Speed measurements shared by ``adtr-edge bench`` and the scripts in ``benchmarks/``.

What is measured, per model folder and backend, at each batch size:

* stages, in milliseconds per batch (mean/p50/p95 after warm-up): ``preprocess`` (host resize of a
  camera-size frame, 640x480 by default, to the model size, as the runtime does), ``backbone`` and
  ``transformer`` (host wall time as the backend reports it, copies included), ``postprocess``
  (normalised score, label, and the anomaly map resized onto the frame for an overlay), and
  ``total`` (one wall clock around all four). Backends that time device compute add
  ``backbone_gpu``/``transformer_gpu``: host latency and device time are reported separately
  because they are so often confused;
* throughput in images/s (batch x iterations / summed total wall time);
* memory: resident set size before the run, its peak during the run and the difference (Linux
  ``VmHWM``, reset before each run where the kernel allows it; else ``ru_maxrss``, which only
  grows over the process lifetime), plus GPU memory in use where a GPU answers;
* FLOPs per frame counted from the ONNX graphs (``count_flops``), the achieved FLOP/s, and this
  machine's float32 matrix-multiply peak measured in the same run, so "achieved / peak" says how
  much of the machine the model uses.

Nothing here imports torch unless a PyTorch checkpoint is benchmarked (``TorchBackend``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from .errors import AdtrError
from .fileio import write_json_atomic, write_text_atomic
from .folder import CHECKPOINT, ONNX_KINDS, QDQ, TENSORRT, ModelFolder, read_model_folder
from .metadata import BACKBONE, GRAPHS, TRANSFORMER
from .postprocessing import Thresholds
from .runtime.backends.base import Backend
from .runtime.detector import Detector

SCHEMA = "adtr-edge-bench/1"
BACKEND_CHOICES = ("all", "onnxruntime", "tensorrt", "torch")
DEFAULT_FRAME = (480, 640)  # (H, W) of the synthetic camera frame that preprocessing resizes
STAGES = ("preprocess", "backbone", "transformer", "postprocess", "total")

# --------------------------------------------------------------------------------------------
# FLOPs from an ONNX graph
# --------------------------------------------------------------------------------------------

# Ops whose multiply-accumulates are counted, as 2 FLOPs per MAC (multiply + add).
COUNTED_OPS = ("Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm")
# (data input index, weight/second input index) of each counted op.
_OPERANDS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3),
             "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
FLOPS_NOTE = ("FLOPs = 2 x multiply-accumulates of Conv/Gemm/MatMul (and their integer forms) only; bias adds, "
              "element-wise ops, activations, Softmax, LayerNormalization, Resize, pooling, reductions and "
              "Q/DQ nodes are ignored (a few percent of the total for this model)")

TORCH_FLOPS_NOTE = ("torch.utils.flop_counter on the eager model: timm's features_only backbone runs every block, "
                    "also those after the last stage used, which the exported graph drops")


@dataclass
class FlopCount:
    """FLOPs of one graph at ``batch``; ``unresolved`` names counted-op nodes whose shapes were unknown."""

    total: int
    batch: int
    by_op: dict[str, int] = field(default_factory=dict)
    counted_nodes: int = 0
    ignored_ops: dict[str, int] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"total": self.total, "batch": self.batch, "by_op": dict(self.by_op), "counted_nodes": self.counted_nodes,
                "ignored_ops": dict(self.ignored_ops), "unresolved": list(self.unresolved), "note": FLOPS_NOTE}


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose symbolic input/output dims are ``batch``, so shape inference yields numbers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]  # inferred afresh with the concrete batch
    initializers = {t.name for t in m.graph.initializer}
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = batch
    return m


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for t in model.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for node in model.graph.node:  # Constant nodes carry their shape in the attribute
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = tuple(int(d) for d in node.attribute[0].t.dims)
    return shapes


def _node_flops(node, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """FLOPs of one counted node, or None when a needed shape is unknown."""
    a_idx, b_idx = _OPERANDS[node.op_type]
    if len(node.input) <= b_idx:
        return None
    a, b = shapes.get(node.input[a_idx]), shapes.get(node.input[b_idx])
    out = shapes.get(node.output[0])
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        # Each output element is a dot product over (Cin / group) x kernel taps = weight.shape[1:].
        if b is None or out is None:
            return None
        return 2 * int(np.prod(out, dtype=np.int64)) * int(np.prod(b[1:], dtype=np.int64))
    if node.op_type == "Gemm":
        if a is None or b is None:
            return None
        attrs = {at.name: at.i for at in node.attribute if at.name in ("transA", "transB")}
        m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
        n = b[0] if attrs.get("transB") else b[1]
        return 2 * int(m) * int(k) * int(n)
    # MatMul family: numpy semantics; every output element is a dot product of length K.
    if a is None:
        return None
    k = a[-1]
    if out is None:
        if b is None:
            return None
        try:
            out = np.broadcast_shapes(a[:-2], b[:-2]) + (a[-2] if len(a) > 1 else 1, b[-1] if len(b) > 1 else 1)
        except ValueError:
            return None
    return 2 * int(np.prod(out, dtype=np.int64)) * int(k)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _eval_shape_op(node, args: list, shapes: dict) -> np.ndarray | None:
    """numpy value of a small integer op on constant inputs (the shape arithmetic of a graph)."""
    op = node.op_type
    if op == "Shape":
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        return np.asarray(shape[_attr(node, "start", 0):_attr(node, "end", None)], dtype=np.int64)
    if any(a is None for a in args):
        return None
    if op == "Identity":
        return args[0]
    if op == "Gather":
        return np.take(args[0], args[1], axis=_attr(node, "axis", 0))
    if op == "Unsqueeze":
        axes = args[1] if len(args) > 1 else _attr(node, "axes")
        out = args[0]
        for ax in sorted(int(a) % (out.ndim + len(axes)) for a in np.atleast_1d(axes)):
            out = np.expand_dims(out, ax)
        return out
    if op == "Squeeze":
        axes = args[1] if len(args) > 1 else _attr(node, "axes")
        return np.squeeze(args[0], axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(a) for a in args], axis=_attr(node, "axis", 0))
    if op == "Slice":
        data, starts, ends = args[0], args[1], args[2]
        axes = args[3] if len(args) > 3 else range(len(starts))
        steps = args[4] if len(args) > 4 else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            index[int(ax)] = slice(int(st), int(en), int(sp))
        return data[tuple(index)]
    if op == "Cast":
        return args[0].astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to")))
    binary = {"Equal": np.equal, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
    if op in binary:
        return binary[op](args[0], args[1])
    if op == "Div" and np.issubdtype(args[0].dtype, np.integer):
        return args[0] // args[1]
    if op == "Where":
        return np.where(args[0], args[1], args[2])
    if op == "ConstantOfShape":
        value = _attr(node, "value")
        fill = onnx.numpy_helper.to_array(value).reshape(-1)[0] if value is not None else np.float32(0)
        return np.full(tuple(int(d) for d in args[0]), fill)
    return None


_SHAPE_OPS = ("Shape", "Identity", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Equal", "Add", "Sub",
              "Mul", "Div", "Where", "ConstantOfShape")
_MAX_FOLDED = 64  # elements: shape tensors are tiny; anything bigger is data, not shape arithmetic


def _fold_shape_arithmetic(model: onnx.ModelProto, shapes: dict) -> int:
    """Evaluate integer shape computations (Shape -> Gather -> Concat -> Where -> ...) that ONNX's
    data propagation leaves open, and pin their results as initializers so a second shape-inference
    pass resolves Reshape/Expand outputs. Returns how many tensors were pinned."""
    values: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and np.prod(t.dims) <= _MAX_FOLDED:
            values[t.name] = onnx.numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = _attr(node, "value")
            if value is not None and np.prod(value.dims) <= _MAX_FOLDED:
                values[node.output[0]] = onnx.numpy_helper.to_array(value)
            continue
        if node.op_type not in _SHAPE_OPS:
            continue
        args = [values.get(i) if i else None for i in node.input]
        try:
            out = _eval_shape_op(node, args, shapes)
        except (ValueError, IndexError, TypeError):
            out = None
        if out is not None and np.asarray(out).size <= _MAX_FOLDED:
            values[node.output[0]] = np.asarray(out)
    existing = {t.name for t in model.graph.initializer}
    consumed = {i for n in model.graph.node if n.op_type not in _SHAPE_OPS + ("Constant",) for i in n.input}
    pinned = 0
    for name, value in values.items():
        if name in consumed and name not in existing:
            model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
            pinned += 1
    return pinned


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and friends for inconsistent graphs
        raise AdtrError(f"ONNX shape inference failed, cannot count FLOPs: {str(e).splitlines()[0]}") from None


def count_flops(model: onnx.ModelProto, batch: int = 1) -> FlopCount:
    """FLOPs of ``model`` for a batch of ``batch`` (see ``FLOPS_NOTE`` for what is counted).

    Pure: shapes come from ONNX shape inference on a copy whose symbolic batch dim is fixed, helped
    by folding the integer shape arithmetic that the inference alone does not evaluate.
    """
    if batch < 1:
        raise AdtrError(f"batch must be >= 1 to count FLOPs, got {batch}")
    fixed = _fix_batch(model, batch)
    inferred = _infer(fixed)
    shapes = _known_shapes(inferred)
    for _ in range(3):  # each pass can expose shapes that feed further Shape ops
        if not _fold_shape_arithmetic(fixed, shapes):
            break
        del fixed.graph.value_info[:]
        inferred = _infer(fixed)
        shapes = _known_shapes(inferred)
    result = FlopCount(total=0, batch=batch)
    for node in inferred.graph.node:
        if node.op_type not in COUNTED_OPS:
            result.ignored_ops[node.op_type] = result.ignored_ops.get(node.op_type, 0) + 1
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            result.unresolved.append(node.name or f"{node.op_type}->{node.output[0]}")
            continue
        result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + flops
        result.counted_nodes += 1
        result.total += flops
    return result


def count_graph_flops(path: str | Path, batch: int = 1) -> FlopCount:
    p = Path(path)
    if not p.is_file():
        raise AdtrError(f"ONNX graph not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise AdtrError(f"{p}: not a readable ONNX file ({str(e).splitlines()[0]})") from None
    return count_flops(model, batch)


# --------------------------------------------------------------------------------------------
# The machine: description, memory, matrix-multiply peak
# --------------------------------------------------------------------------------------------

_LIBRARIES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "torch", "timm",
              "tensorrt", "cuda-python")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a reader needs to compare numbers: CPU, cores usable, Python, library versions."""
    versions = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "platform": platform.platform(), "python": platform.python_version(), "libraries": versions}


def header_lines(argv: Sequence[str] | None = None) -> list[str]:
    """Command line, machine and date: the first lines of every benchmark's output."""
    m = machine_info()
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    return [
        f"command: {' '.join(argv if argv is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])}",
        f"machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, {m['platform']}",
        f"python {m['python']}; {libs}",
        f"date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
    ]


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process in MiB (Linux), None elsewhere."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


def lifetime_peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


class PeakRss:
    """Peak RSS over a block: resets Linux's high-water mark (``/proc/self/clear_refs`` = 5) first,
    so the peak belongs to this block and not to whatever ran earlier in the process."""

    def __enter__(self) -> "PeakRss":
        self.before_mb = rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.source = "VmHWM reset before the run"
        except OSError:
            self.source = "ru_maxrss (process lifetime peak; could not reset)"
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kib("VmHWM") if self.source.startswith("VmHWM") else None
        self.peak_mb = hwm / 1024.0 if hwm is not None else lifetime_peak_rss_mb()
        self.after_mb = rss_mb()

    def to_dict(self) -> dict:
        delta = None if self.before_mb is None else max(0.0, self.peak_mb - self.before_mb)
        return {"rss_before_mb": _r(self.before_mb), "rss_peak_mb": _r(self.peak_mb), "rss_after_mb": _r(self.after_mb),
                "rss_delta_mb": _r(delta), "process_peak_rss_mb": _r(lifetime_peak_rss_mb()), "peak_source": self.source}


def gpu_memory_used_mb() -> float | None:
    """Device memory in use on the current GPU (all processes), via cuda-python; None without a GPU."""
    try:
        from .cuda import CudaRuntime, gpu_available  # noqa: PLC0415

        ok, _ = gpu_available()
        if not ok:
            return None
        rt = CudaRuntime()
        free, total = rt.check(rt.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return (int(total) - int(free)) / (1024.0 * 1024.0)
    except Exception:  # no cuda-python, no driver: simply not available
        return None


def _r(x, nd: int = 3):
    return None if x is None else round(float(x), nd)


def _gemm_graph(n: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper  # noqa: PLC0415

    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm_peak", [a, b], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def measure_gemm_peak(n: int = 1024, repeats: int = 10, threads: int | None = None, engine: str = "auto") -> dict:
    """Float32 n x n x n matrix multiply, best of ``repeats``: the attainable FLOP/s of this machine.

    ``engine`` "onnxruntime" (same thread pool settings as the ONNX Runtime backend; the default
    when it imports) or "numpy" (its BLAS, its own thread count).
    """
    if n < 8 or repeats < 1:
        raise AdtrError(f"GEMM peak needs n >= 8 and repeats >= 1, got n={n}, repeats={repeats}")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    run: Callable[[], object]
    if engine in ("auto", "onnxruntime"):
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError:
            if engine == "onnxruntime":
                raise AdtrError("GEMM peak with onnxruntime: onnxruntime is not installed") from None
            engine = "numpy"
        else:
            engine = "onnxruntime"
            opts = ort.SessionOptions()
            if threads is not None:
                opts.intra_op_num_threads = int(threads)
            sess = ort.InferenceSession(_gemm_graph(n).SerializeToString(), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
            run = lambda: sess.run(None, {"A": a, "B": b})  # noqa: E731
    if engine == "numpy":
        run = lambda: a @ b  # noqa: E731
    elif engine != "onnxruntime":
        raise AdtrError(f"GEMM engine {engine!r}: use auto, onnxruntime or numpy")
    run()  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    flops = 2.0 * n ** 3
    return {"engine": engine, "n": n, "threads": threads, "best_ms": round(best * 1e3, 3), "gflops": round(flops / best / 1e9, 2)}


# --------------------------------------------------------------------------------------------
# Model folders and backends
# --------------------------------------------------------------------------------------------

@dataclass
class Target:
    """One thing to benchmark: a folder and the backend that runs it."""

    path: Path
    kind: str  # a kind of adtr_edge.folder.KINDS
    backend: str  # "onnxruntime" | "tensorrt" | "torch"
    precision: str
    available: bool = True
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.backend}, {self.precision})"


def _precision(folder: ModelFolder) -> str:
    if folder.kind == CHECKPOINT:
        return "fp32"
    if folder.kind == QDQ or folder.meta.raw.get("quantization"):
        return "int8-qdq"
    if folder.kind == TENSORRT:
        engines = folder.manifest.get("engines") or {}
        precs = sorted({str(e.get("precision") or e.get("key", {}).get("precision")) for e in engines.values()
                        if isinstance(e, dict)})
        return "+".join(p for p in precs if p != "None") or "engine"
    return "fp32"


def resolve_targets(model_dirs: Sequence[str | Path], backend: str = "all") -> list[Target]:
    """What to run for each folder. ``backend="all"``: each folder's own backend, unavailable ones
    kept as skipped entries with the reason; an explicit backend must apply and be available."""
    if backend not in BACKEND_CHOICES:
        raise AdtrError(f"--backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if not model_dirs:
        raise AdtrError("give at least one model folder")
    targets = []
    for d in model_dirs:
        folder = read_model_folder(d)  # every kind the toolkit writes (the table in adtr_edge.folder)
        natural = folder.backend
        if backend != "all" and backend != natural:
            raise AdtrError(f"{folder.path}: a {folder.kind} folder runs on {natural}, not --backend {backend}")
        ok, why = _backend_available(natural)
        if not ok and backend != "all":
            raise AdtrError(f"{folder.path}: --backend {backend} cannot run here: {why}")
        targets.append(Target(folder.path, folder.kind, natural, _precision(folder), ok, "" if ok else why))
    return targets


def _backend_available(name: str) -> tuple[bool, str]:
    import importlib  # noqa: PLC0415

    if name == "tensorrt":
        from .runtime.loading import tensorrt_available  # noqa: PLC0415

        return tensorrt_available()
    module = {"onnxruntime": "onnxruntime", "torch": "torch"}[name]
    try:
        importlib.import_module(module)
    except Exception as e:
        return False, f"cannot import {module} ({e.__class__.__name__}: {e})"
    return True, f"{module} imports"


class TorchBackend(Backend):
    """PyTorch eager on a checkpoint folder, behind the runtime's Backend contract, so the same
    measurement loop times it next to ONNX Runtime and TensorRT (benchmarks only)."""

    name = "torch"

    def __init__(self, checkpoint: str | Path, *, threads: int | None = None, device: str = "cpu"):
        import torch  # noqa: PLC0415

        from .export.onnx_export import checkpoint_metadata  # noqa: PLC0415
        from .train.checkpoint import load_checkpoint  # noqa: PLC0415

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.torch, self.device = torch, torch.device(device)
        model, ckpt = load_checkpoint(checkpoint, device=self.device)
        for p in model.parameters():  # inference only (and torch's FLOP counter trips on grad-less views)
            p.requires_grad_(False)
        thresholds = ckpt.thresholds or Thresholds(1.0, 0.0, 2.0, "uncalibrated")
        super().__init__(checkpoint_metadata(model, ckpt, thresholds))
        self.model, self.graph = model, model.transformer_graph()

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _run_backbone(self, images: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.backbone(self.torch.from_numpy(np.ascontiguousarray(images)).to(self.device)).cpu().numpy()

    def _run_transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            amap, score = self.graph(self.torch.from_numpy(np.ascontiguousarray(features)).to(self.device))
        return amap.cpu().numpy(), score.cpu().numpy()

    def count_flops(self) -> dict[str, int]:
        """FLOPs per frame by torch's own counter (matmul/conv family), a cross-check of ``count_flops``."""
        from torch.utils import flop_counter  # noqa: PLC0415

        def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query, key, value)

        # torch's counter has no formula for the CPU kernel of scaled_dot_product_attention (it
        # counts the CUDA ones), so the attention matmuls of the fused path would count as 0.
        mapping = {}
        cpu_op = getattr(self.torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if cpu_op is not None:
            mapping[cpu_op] = cpu_sdpa

        h, w = self.meta.input_size
        images = self.torch.zeros((1, h, w, 3), dtype=self.torch.uint8, device=self.device)
        out = {}
        # no_grad, not inference_mode: the counter hooks autograd, which inference tensors lack.
        with self.torch.no_grad():
            with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as fc:
                features = self.model.backbone(images)
            out[BACKBONE] = int(fc.get_total_flops())
            with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as fc:
                self.graph(features)
            out[TRANSFORMER] = int(fc.get_total_flops())
        return out


def open_backend(target: Target, threads: int | None = None) -> Backend:
    if target.backend == "torch":
        return TorchBackend(target.path, threads=threads)
    from .runtime.loading import load_backend  # noqa: PLC0415

    options = {"intra_op_threads": threads} if target.backend == "onnxruntime" and threads is not None else {}
    return load_backend(target.path, target.backend, **options)


def graph_flops(target: Target) -> dict | None:
    """Per-graph FLOPs per frame of an ONNX folder (None for engines and checkpoints)."""
    if target.kind not in ONNX_KINDS:
        return None
    folder = read_model_folder(target.path, accept=ONNX_KINDS)
    out = {g: count_graph_flops(folder.graph_file(g)).to_dict() for g in GRAPHS}
    out["per_frame"] = sum(out[g]["total"] for g in GRAPHS)
    return out


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def summarize(samples_ms: Iterable[float]) -> dict:
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "min": None}
    return {"count": int(a.size), "mean": round(float(a.mean()), 4), "p50": round(float(np.percentile(a, 50)), 4),
            "p95": round(float(np.percentile(a, 95)), 4), "min": round(float(a.min()), 4)}


def camera_frame(frame_size: tuple[int, int] = DEFAULT_FRAME, seed: int = 0) -> np.ndarray:
    """A textured BGR frame of camera size (noise, so the resize touches real data)."""
    h, w = frame_size
    if h < 1 or w < 1:
        raise AdtrError(f"frame size {frame_size}: both sides must be >= 1")
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def time_one_batch(detector: Detector, frames: list[np.ndarray]) -> dict[str, float]:
    """Milliseconds of each stage for one batch of camera frames, plus ``total`` wall time.

    Through the runtime's own path (``Detector``: preprocess -> infer -> postprocess), then what a
    viewer does next: each map resized onto its frame (counted in ``postprocess``)."""
    t0 = time.perf_counter()
    detections = detector(frames)
    t1 = time.perf_counter()
    for d in detections:
        d.map_for_frame()
    t2 = time.perf_counter()
    timings = dict(detections[0].timings)
    timings["postprocess"] = timings.get("postprocess", 0.0) + (t2 - t1) * 1e3
    timings["total"] = (t2 - t0) * 1e3
    return timings


def time_batches(backend: Backend, batch: int, *, warmup: int, iters: int, frame_size=DEFAULT_FRAME) -> dict:
    """Warm up, then time ``iters`` batches of ``batch`` camera frames: per-stage stats and throughput."""
    if batch < 1 or iters < 1 or warmup < 0:
        raise AdtrError(f"batch >= 1, iters >= 1 and warmup >= 0 are required (got {batch}, {iters}, {warmup})")
    frame = camera_frame(frame_size)
    frames = [frame] * batch
    detector = Detector(backend)  # activates the backend (a no-op when it is active); the caller closes it
    for _ in range(warmup):
        time_one_batch(detector, frames)
    samples: dict[str, list[float]] = {}
    for _ in range(iters):
        for k, v in time_one_batch(detector, frames).items():
            samples.setdefault(k, []).append(v)
    total_s = sum(samples["total"]) / 1e3
    stages = {k: summarize(v) for k, v in samples.items()}
    return {"batch": batch, "iters": iters, "warmup": warmup, "stages_ms": stages,
            "per_image_ms": round(stages["total"]["mean"] / batch, 4),
            "throughput_ips": round(batch * iters / total_s, 3) if total_s > 0 else None}


def achieved(flops: dict | None, stages_ms: dict, batch: int, peak_gflops: float | None) -> dict | None:
    """GFLOP/s achieved per graph and end to end (device time where the backend reports it)."""
    if not flops:
        return None
    out = {}
    for g in GRAPHS:
        st = stages_ms.get(f"{g}_gpu") or stages_ms.get(g)
        if st and st["mean"]:
            out[g] = round(flops[g]["total"] * batch / (st["mean"] / 1e3) / 1e9, 3)
    compute_ms = sum((stages_ms.get(f"{g}_gpu") or stages_ms[g])["mean"] for g in GRAPHS)
    out["model"] = round(flops["per_frame"] * batch / (compute_ms / 1e3) / 1e9, 3) if compute_ms else None
    if peak_gflops and out["model"] is not None:
        out["fraction_of_gemm_peak"] = round(out["model"] / peak_gflops, 4)
    return out


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, iters: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several callables A, B, C, A, B, C, ... so that machine noise (other processes, clock
    changes) hits every variant alike; returns the milliseconds of each call per variant."""
    if rounds < 1 or iters < 1:
        raise AdtrError(f"rounds and iters must be >= 1, got {rounds}, {iters}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 4, 8)
    warmup: int = 3
    iters: int = 20
    threads: int | None = None
    frame_size: tuple[int, int] = DEFAULT_FRAME
    gemm_n: int = 1024

    def validate(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise AdtrError(f"--batch {','.join(map(str, self.batches))}: batch sizes must be >= 1")
        if self.iters < 1:
            raise AdtrError(f"--iters {self.iters}: must be >= 1")
        if self.warmup < 0:
            raise AdtrError(f"--warmup {self.warmup}: must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise AdtrError(f"--threads {self.threads}: must be >= 1")


def bench_target(target: Target, settings: BenchSettings, peak_gflops: float | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """One target at every batch size; a skipped entry (with its reason) when it cannot run here."""
    entry = {"model_dir": str(target.path), "kind": target.kind, "backend": target.backend, "precision": target.precision,
             "label": target.label}
    if not target.available:
        return dict(entry, status="skipped", reason=target.reason)
    entry["flops"] = graph_flops(target)
    gpu_before = gpu_memory_used_mb()
    with PeakRss() as mem:
        backend = open_backend(target, settings.threads)
        try:
            backend.activate()
            entry["providers"] = list(getattr(backend, "providers", []) or [])
            if entry["flops"] is None and isinstance(backend, TorchBackend):
                counted = backend.count_flops()
                entry["flops"] = {g: {"total": counted[g], "note": TORCH_FLOPS_NOTE} for g in GRAPHS}
                entry["flops"]["per_frame"] = sum(counted.values())
            gpu_active = gpu_memory_used_mb()
            results = []
            max_batch = getattr(backend, "max_batch", None)
            for b in settings.batches:
                if max_batch is not None and b > max_batch:
                    results.append({"batch": b, "status": "skipped", "reason": f"engine profile max batch is {max_batch}"})
                    continue
                if log:
                    log(f"{target.label}: batch {b}, {settings.warmup} warm-up + {settings.iters} timed")
                r = time_batches(backend, b, warmup=settings.warmup, iters=settings.iters, frame_size=settings.frame_size)
                r["status"] = "ok"
                r["achieved_gflops"] = achieved(entry["flops"], r["stages_ms"], b, peak_gflops)
                results.append(r)
        finally:
            backend.deactivate()
    entry["batches"] = results
    entry["memory"] = mem.to_dict()
    if gpu_before is not None:
        entry["memory"]["gpu_used_before_mb"] = _r(gpu_before)
        entry["memory"]["gpu_used_active_mb"] = _r(gpu_active)
    entry["status"] = "ok"
    return entry


def run_bench(model_dirs: Sequence[str | Path], backend: str = "all", settings: BenchSettings | None = None,
              log: Callable[[str], None] | None = None, command: str | None = None) -> dict:
    """The whole benchmark: GEMM peak, then every target at every batch size. Returns the report dict."""
    settings = settings or BenchSettings()
    settings.validate()
    targets = resolve_targets(model_dirs, backend)
    peak = measure_gemm_peak(settings.gemm_n, threads=settings.threads)
    if log:
        log(f"float32 GEMM peak: {peak['gflops']} GFLOP/s ({peak['engine']}, n={peak['n']})")
    runs = [bench_target(t, settings, peak["gflops"], log) for t in targets]
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {"batches": list(settings.batches), "warmup": settings.warmup, "iters": settings.iters,
                     "threads": settings.threads, "frame_size": list(settings.frame_size)},
        "gemm_peak": peak,
        "flops_note": FLOPS_NOTE,
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

def _fmt(x, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table_rows(report: dict) -> list[list[str]]:
    """One row per (target, batch): label, batch, stage means (p95), total, images/s, GFLOP/s, RSS peak."""
    rows = []
    for run in report["runs"]:
        if run["status"] != "ok":
            rows.append([run["label"], "-", f"skipped: {run['reason']}"] + [""] * 7)
            continue
        for b in run["batches"]:
            if b.get("status") != "ok":
                rows.append([run["label"], str(b["batch"]), f"skipped: {b['reason']}"] + [""] * 7)
                continue
            st = b["stages_ms"]

            def cell(name):
                s = st.get(name)
                if not s:
                    return "-"
                gpu = st.get(f"{name}_gpu")
                text = f"{_fmt(s['mean'])} ({_fmt(s['p95'])})"
                return text + (f" gpu {_fmt(gpu['mean'])}" if gpu else "")

            ach = b.get("achieved_gflops") or {}
            frac = ach.get("fraction_of_gemm_peak")
            rows.append([run["label"], str(b["batch"]), cell("preprocess"), cell("backbone"), cell("transformer"),
                         cell("postprocess"), cell("total"), _fmt(b["throughput_ips"], 1),
                         f"{_fmt(ach.get('model'), 1)}" + (f" ({frac * 100:.0f}%)" if frac is not None else ""),
                         _fmt(run["memory"]["rss_peak_mb"], 0)])
    return rows


TABLE_HEADER = ["model", "batch", "preprocess", "backbone", "transformer", "postprocess", "total", "img/s",
                "GFLOP/s (of peak)", "RSS peak MB"]


def to_markdown(report: dict) -> str:
    m, peak = report["machine"], report["gemm_peak"]
    s = report["settings"]
    lines = [
        "# adtr-edge bench",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {m['cpu']}, {m['usable_cores']} usable cores, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
        f"- settings: batches {s['batches']}, {s['warmup']} warm-up + {s['iters']} timed iterations, threads "
        f"{s['threads'] or 'default'}, camera frame {s['frame_size'][1]}x{s['frame_size'][0]}",
        f"- float32 GEMM peak: {peak['gflops']} GFLOP/s ({peak['engine']}, n={peak['n']})",
        "",
        "Stage cells: mean (p95) ms per batch; `gpu` = device compute time where the backend measures it.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    flops = [(r["label"], r["flops"]) for r in report["runs"] if r.get("flops")]
    if flops:
        lines += ["", "| model | backbone GFLOPs | transformer GFLOPs | per frame GFLOPs |", "|---|---|---|---|"]
        for name, f in flops:
            lines.append(f"| {name} | {f[BACKBONE]['total'] / 1e9:.3f} | {f[TRANSFORMER]['total'] / 1e9:.3f} | {f['per_frame'] / 1e9:.3f} |")
        lines += ["", report["flops_note"] + "."]
    mem = [(r["label"], r["memory"]) for r in report["runs"] if r.get("memory")]
    if mem:
        lines += ["", "| model | RSS before MB | RSS peak MB | delta MB | GPU used MB | peak measured by |", "|---|---|---|---|---|---|"]
        for name, mm in mem:
            lines.append(f"| {name} | {_fmt(mm['rss_before_mb'], 0)} | {_fmt(mm['rss_peak_mb'], 0)} | {_fmt(mm['rss_delta_mb'], 0)} | "
                         f"{_fmt(mm.get('gpu_used_active_mb'), 0)} | {mm['peak_source']} |")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, json_path: str | Path | None = None, markdown_path: str | Path | None = None) -> None:
    if json_path is not None:
        write_json_atomic(json_path, report)
    if markdown_path is not None:
        write_text_atomic(markdown_path, to_markdown(report))


__all__ = ["count_flops", "count_graph_flops", "FlopCount", "measure_gemm_peak", "machine_info", "header_lines",
           "run_bench", "bench_target", "interleaved", "resolve_targets", "BenchSettings", "TorchBackend", "time_batches",
           "to_markdown", "write_reports"]
