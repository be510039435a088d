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

Rooms: ``flops`` (counting), ``machine`` (description, memory, GEMM peak), ``targets`` (folders,
backends, ``TorchBackend``), ``timing`` (batches, ``bench_target``, ``run_bench``), ``report``
(table, Markdown, files), ``cli`` (the command, registered by adtr_edge.cli). The names below are
loaded on first use, so importing the package (and ``adtr-edge --help``) does not import onnx.
The scripts in ``benchmarks/`` also share ``scripts`` (untrained-but-real models, the options every
speed script has, ONNX Runtime sessions) and ``evaluation`` (a trained checkpoint's features on a
split, with torch); they import them by module name.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "COUNTED_OPS": "flops",
    "FLOPS_NOTE": "flops",
    "TORCH_FLOPS_NOTE": "flops",
    "FlopCount": "flops",
    "count_flops": "flops",
    "count_graph_flops": "flops",
    "PeakRss": "machine",
    "cpu_model": "machine",
    "gpu_memory_used_mb": "machine",
    "header_lines": "machine",
    "lifetime_peak_rss_mb": "machine",
    "machine_info": "machine",
    "measure_gemm_peak": "machine",
    "rss_mb": "machine",
    "Target": "targets",
    "TorchBackend": "targets",
    "backend_choices": "targets",
    "graph_flops": "targets",
    "open_backend": "targets",
    "resolve_targets": "targets",
    "DEFAULT_FRAME": "timing",
    "SCHEMA": "timing",
    "STAGES": "timing",
    "BenchSettings": "timing",
    "achieved": "timing",
    "bench_target": "timing",
    "camera_frame": "timing",
    "interleaved": "timing",
    "run_bench": "timing",
    "summarize": "timing",
    "time_batches": "timing",
    "time_one_batch": "timing",
    "TABLE_HEADER": "report",
    "table_rows": "report",
    "to_markdown": "report",
    "write_reports": "report",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adtr_edge.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
