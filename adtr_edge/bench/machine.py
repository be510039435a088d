"""The machine: a description for reports, memory (RSS, GPU) and the float32 matrix-multiply peak."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from ..errors import AdtrError

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
        from ..cuda import CudaRuntime, gpu_available  # noqa: PLC0415

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


