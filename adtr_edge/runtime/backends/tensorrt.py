"""TensorRT backend: the two engines of an ``engines/<name>/`` folder on one GPU.

Buffers are allocated once for the profile's max batch: pinned host memory for what crosses the
bus (uint8 images in, anomaly map and score out) and device memory for everything. Features never
leave the device between the stages. Each stage has its own stream; there are two buffer slots, so
in ``infer_many`` the backbone of batch t+1 runs while the transformer of batch t does, ordered by
events (transformer waits for "features of slot s ready"; the backbone waits for "slot s consumed"
before overwriting it). Name-based I/O (``set_input_shape``/``set_tensor_address``/
``execute_async_v3``) works from TensorRT 8.5 on. Optional CUDA graphs (10+, cuda-python binding)
replay each (stage, slot, batch) enqueue. Device buffers go through cuda-python or pycuda
(``cuda_binding``; see ``adtr_edge.cuda.make_cuda_runtime``), typed against ``adtr_edge.cuda.CudaMemory``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ...engine.manifest import check_loadable, read_manifest
from ...folder import TENSORRT, engine_entries, engine_file, read_model_folder
from ...errors import AdtrError
from ...metadata import ANOMALY_MAP, BACKBONE, FEATURES, IMAGES, SCORE, TRANSFORMER, ModelMeta
from ...cuda import CUDA_BINDINGS, CudaMemory, gpu_available, make_cuda_runtime
from .base import Backend, InferResult

log = logging.getLogger(__name__)

SLOTS = 2


def available() -> tuple[bool, str]:
    """(True, description) when tensorrt imports and a GPU answers; else (False, why)."""
    from ...engine.trt_api import trt_available  # noqa: PLC0415

    ok, why = trt_available()
    if not ok:
        return False, why
    ok_gpu, gpu = gpu_available()
    if not ok_gpu:
        return False, gpu
    return True, f"{why} on {gpu}"


class _Stage:
    """One engine and its stream, with timing events per slot.

    Plain enqueues share one execution context. With CUDA graphs each batch size gets a context of
    its own: a captured graph is valid only while its context keeps the input shapes it was
    captured with, so a shared context that switched batch size would replay stale state. On that
    context one graph per slot is captured (the slots' buffer addresses are baked in)."""

    def __init__(self, name, api, cuda, runtime, path: Path, dla_core=None, sink=None):
        self.name, self.api, self.cuda = name, api, cuda
        self.engine = api.deserialize(runtime, path.read_bytes(), str(path), dla_core=dla_core, sink=sink)
        self.context = self.engine.create_execution_context()
        self.io = {t["name"]: t for t in api.io_tensors(self.engine)}
        self.stream = cuda.create_stream()
        self.start = [cuda.create_event() for _ in range(SLOTS)]  # before H2D
        self.compute = [cuda.create_event() for _ in range(SLOTS)]  # before enqueue
        self.done = [cuda.create_event() for _ in range(SLOTS)]  # after enqueue
        self.end = [cuda.create_event() for _ in range(SLOTS)]  # after D2H
        self.graph_contexts: dict[int, object] = {}  # batch size -> its own execution context
        self.graphs: dict[tuple[int, int], tuple] = {}  # (slot, batch) -> (graph, graph exec)

    def inputs(self):
        return [n for n, t in self.io.items() if t["is_input"]]

    def _bind(self, ctx, batch: int, addresses: dict[str, int]) -> None:
        for name in self.inputs():
            shape = (batch, *self.io[name]["shape"][1:])
            if not ctx.set_input_shape(name, shape):
                raise AdtrError(f"{self.name} engine rejects input shape {shape} for {name!r} (outside its batch profile)")
        for name, ptr in addresses.items():
            if not ctx.set_tensor_address(name, ptr):
                raise AdtrError(f"{self.name} engine: cannot bind tensor {name!r}")

    def _execute(self, ctx, handle: int) -> None:
        if not ctx.execute_async_v3(handle):
            raise AdtrError(f"{self.name} engine: execute_async_v3 failed")

    def enqueue(self, slot: int, batch: int, addresses: dict[str, int], use_graphs: bool) -> None:
        handle = self.cuda.stream_handle(self.stream)
        if not use_graphs:
            self._bind(self.context, batch, addresses)
            self._execute(self.context, handle)
            return
        key = (slot, batch)
        if key in self.graphs:
            self.cuda.launch(self.graphs[key][1], self.stream)
            return
        ctx = self.graph_contexts.get(batch)
        if ctx is None:
            ctx = self.graph_contexts[batch] = self.engine.create_execution_context()
        self._bind(ctx, batch, addresses)
        # Warm-up: TensorRT does its shape-dependent setup in the first enqueue after a shape
        # change, which must not happen under capture. This enqueue also computes this batch.
        self._execute(ctx, handle)
        self.graphs[key] = self._capture(ctx, handle)

    def _capture(self, ctx, handle: int) -> tuple:
        """Capture one enqueue into a graph; a failed capture's graph is destroyed, not leaked."""
        self.cuda.begin_capture(self.stream)
        try:
            ok = ctx.execute_async_v3(handle)
        finally:
            graph = self.cuda.end_capture(self.stream)  # always close the capture, even on an exception
        if not ok:
            self.cuda.destroy_graph(graph)
            raise AdtrError(f"{self.name} engine: enqueue failed during CUDA graph capture; run without --cuda-graphs")
        try:
            return graph, self.cuda.instantiate(graph)
        except AdtrError:
            self.cuda.destroy_graph(graph)
            raise

    def release(self) -> None:
        for graph, gexec in self.graphs.values():
            self.cuda.destroy_graph(graph, gexec)
        self.graphs.clear()
        self.graph_contexts.clear()
        for ev in self.start + self.compute + self.done + self.end:
            self.cuda.destroy_event(ev)
        self.cuda.destroy_stream(self.stream)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, *, cuda_graphs: bool = False, cuda_binding: str = "auto", api=None,
                 cuda: CudaMemory | None = None):
        if cuda_binding not in CUDA_BINDINGS:
            raise AdtrError(f"--cuda-binding {cuda_binding!r}: choose one of {', '.join(CUDA_BINDINGS)}")
        self.folder = Path(engine_dir)
        self.manifest = read_manifest(self.folder)
        super().__init__(ModelMeta.validate(self.manifest["meta"], str(self.folder / "manifest.json")))
        self.cuda_graphs = cuda_graphs  # as asked; graphs_active: as run (the binding may lack capture)
        self.graphs_active = False
        self.cuda_binding = cuda_binding
        self._api, self._cuda = api, cuda
        self.engines = engine_entries(read_model_folder(self.folder, accept=(TENSORRT,), purpose="the TensorRT backend"))
        self.max_batch = min(self.engines[g].profile[2] for g in (BACKBONE, TRANSFORMER))
        self._host: dict[str, list] = {}
        self._device: dict[str, list] = {}
        self._pinned_ptrs: list[int] = []
        self._device_ptrs: list[int] = []

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        from ...engine.trt_api import LogSink, load_api, process_logger  # noqa: PLC0415

        api = self._api or load_api()
        cuda = self._cuda or make_cuda_runtime(self.cuda_binding)
        gpu = cuda.device_info()
        check_loadable(self.manifest, self.folder, api.version_string, gpu.name, gpu.compute_capability)
        if self.cuda_graphs and not api.cuda_graphs_allowed:
            raise AdtrError(f"--cuda-graphs needs TensorRT 10 or newer, this is {api.version_string}")
        self.graphs_active = self.cuda_graphs and cuda.supports_graphs
        if self.cuda_graphs and not self.graphs_active:
            log.warning("CUDA graphs off: %s (the %s binding); running plain enqueues", cuda.graphs_unsupported_reason, cuda.name)
        self.api, self.cuda = api, cuda
        # The process-wide logger (TensorRT keeps one); this backend's messages go to its own sink.
        self._logger, self.log_sink = process_logger(api), LogSink()
        with self._logger.capture(self.log_sink):
            self._runtime = api.trt.Runtime(self._logger)
            self.stages = {g: _Stage(g, api, cuda, self._runtime, engine_file(self.folder, g),
                                     self.engines[g].dla_core, self.log_sink)
                           for g in (BACKBONE, TRANSFORMER)}
        h, w = self.meta.input_size
        gh, gw = self.meta.grid
        c, n = self.meta.channels, self.max_batch
        shapes = {IMAGES: ((n, h, w, 3), np.uint8), FEATURES: ((n, c, gh, gw), np.float32),
                  ANOMALY_MAP: ((n, 1, h, w), np.float32), SCORE: ((n,), np.float32)}
        self._check_io(shapes)
        for name, (shape, dtype) in shapes.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            self._device[name] = [self._malloc(nbytes) for _ in range(SLOTS)]
            # Features stay on the device; the host copy serves run_backbone (calibration, benchmarks).
            self._host[name] = [self._pinned(shape, dtype) for _ in range(SLOTS)]

    def _check_io(self, shapes) -> None:
        expect = {BACKBONE: {IMAGES: True, FEATURES: False}, TRANSFORMER: {FEATURES: True, ANOMALY_MAP: False, SCORE: False}}
        for g, names in expect.items():
            io = self.stages[g].io
            for name, is_input in names.items():
                t = io.get(name)
                if t is None or t["is_input"] != is_input:
                    raise AdtrError(f"{self.folder}/{g}.engine lacks {'input' if is_input else 'output'} {name!r}; rebuild it")
                dims_ok = len(t["shape"]) == len(shapes[name][0]) and all(
                    d < 0 or d == e for d, e in zip(t["shape"][1:], shapes[name][0][1:]))  # -1: decided at run time
                if t["dtype"] != np.dtype(shapes[name][1]) or not dims_ok:
                    raise AdtrError(f"{self.folder}/{g}.engine: tensor {name!r} is {t['dtype']}{t['shape']}, "
                                    f"metadata says {np.dtype(shapes[name][1])}{shapes[name][0]}")

    def _malloc(self, nbytes):
        ptr = self.cuda.malloc(nbytes)
        self._device_ptrs.append(ptr)
        return ptr

    def _pinned(self, shape, dtype):
        arr, ptr = self.cuda.pinned_array(shape, dtype)
        self._pinned_ptrs.append(ptr)
        return arr

    def _deactivate(self) -> None:
        for st in getattr(self, "stages", {}).values():
            self.cuda.synchronize(st.stream)
            st.release()
        for p in self._device_ptrs:
            self.cuda.free(p)
        for p in self._pinned_ptrs:
            self.cuda.free_host(p)
        self._device_ptrs, self._pinned_ptrs, self._host, self._device = [], [], {}, {}
        self.stages = {}

    # -- the two stages, enqueued ----------------------------------------------------------
    def _check_batch(self, images: np.ndarray) -> int:
        h, w = self.meta.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise AdtrError(f"tensorrt backend expects uint8 (N,{h},{w},3) BGR, got {images.dtype}{images.shape}")
        n = images.shape[0]
        if not 1 <= n <= self.max_batch:
            raise AdtrError(f"batch of {n} is outside the engines' profile (max {self.max_batch}); rebuild with --max-batch")
        return n

    def _enqueue_backbone(self, images: np.ndarray, slot: int) -> int:
        n = self._check_batch(images)
        st, cu = self.stages[BACKBONE], self.cuda
        host = self._host[IMAGES][slot]
        # The transformer must be done reading this slot's features before we overwrite them.
        cu.wait_event(st.stream, self.stages[TRANSFORMER].done[slot])
        cu.record(st.start[slot], st.stream)
        # The previous copy out of this host slot may still be queued: let it run before refilling.
        cu.event_synchronize(st.compute[slot])
        host[:n] = images
        cu.copy_to_device(self._device[IMAGES][slot], host.ctypes.data, images.nbytes, st.stream)
        cu.record(st.compute[slot], st.stream)
        st.enqueue(slot, n, {IMAGES: self._device[IMAGES][slot], FEATURES: self._device[FEATURES][slot]}, self.graphs_active)
        cu.record(st.done[slot], st.stream)
        cu.record(st.end[slot], st.stream)
        return n

    def _enqueue_transformer(self, n: int, slot: int) -> None:
        st, cu = self.stages[TRANSFORMER], self.cuda
        cu.wait_event(st.stream, self.stages[BACKBONE].done[slot])
        cu.record(st.start[slot], st.stream)
        cu.record(st.compute[slot], st.stream)
        st.enqueue(slot, n, {FEATURES: self._device[FEATURES][slot], ANOMALY_MAP: self._device[ANOMALY_MAP][slot],
                             SCORE: self._device[SCORE][slot]}, self.graphs_active)
        cu.record(st.done[slot], st.stream)
        for name in (ANOMALY_MAP, SCORE):
            host = self._host[name][slot]
            cu.copy_to_host(host.ctypes.data, self._device[name][slot], host[:n].nbytes, st.stream)
        cu.record(st.end[slot], st.stream)

    def _collect(self, n: int, slot: int, backbone: bool = True) -> InferResult:
        """The slot's results and event timings; ``backbone=False`` when the features came from the
        host (``_run_transformer``): the backbone's events of this slot may never have been recorded,
        and CUDA refuses to time those (cudaErrorInvalidResourceHandle)."""
        b, t = self.stages[BACKBONE], self.stages[TRANSFORMER]
        self.cuda.synchronize(t.stream)
        el = self.cuda.elapsed_ms
        if backbone:
            # The transformer only waited for the backbone's "done"; its "end" event (timing) may not
            # have been reached yet when the transformer stream is idle.
            self.cuda.event_synchronize(b.end[slot])
            timings = {
                "backbone": el(b.start[slot], b.end[slot]), "transformer": el(t.start[slot], t.end[slot]),
                "backbone_gpu": el(b.compute[slot], b.done[slot]), "transformer_gpu": el(t.compute[slot], t.done[slot]),
            }
        else:
            timings = {"transformer": el(t.start[slot], t.end[slot]), "transformer_gpu": el(t.compute[slot], t.done[slot])}
        amap = self._host[ANOMALY_MAP][slot][:n].copy()
        score = self._host[SCORE][slot][:n].copy()
        return InferResult(amap, score, timings)

    # -- Backend API -----------------------------------------------------------------------
    def infer(self, images: np.ndarray) -> InferResult:
        if not self.is_active:
            self.activate()
        t0 = time.perf_counter()
        n = self._enqueue_backbone(images, 0)
        self.cuda.synchronize(self.stages[BACKBONE].stream)
        t1 = time.perf_counter()
        self._enqueue_transformer(n, 0)
        result = self._collect(n, 0)
        t2 = time.perf_counter()
        # Host wall time per stage (copies included); device compute from events.
        result.timings["backbone"], result.timings["transformer"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        return result

    def infer_many(self, batches):
        """Overlap: enqueue backbone(t+1) before collecting transformer(t). Device-side
        "backbone"/"transformer" times come from events (host wall time is shared by both)."""
        if not self.is_active:
            self.activate()
        pending = None  # (n, slot) whose backbone is enqueued
        slot = 0
        for images in batches:
            n = self._enqueue_backbone(images, slot)
            if pending is not None:
                yield self._collect(*pending)
            self._enqueue_transformer(n, slot)
            pending = (n, slot)
            slot = (slot + 1) % SLOTS
        if pending is not None:
            yield self._collect(*pending)

    def _run_backbone(self, images: np.ndarray) -> np.ndarray:
        n = self._enqueue_backbone(images, 0)
        st = self.stages[BACKBONE]
        host = self._host[FEATURES][0]
        self.cuda.copy_to_host(host.ctypes.data, self._device[FEATURES][0], host[:n].nbytes, st.stream)
        self.cuda.synchronize(st.stream)
        return host[:n].copy()

    def _run_transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = features.shape[0]
        if not 1 <= n <= self.max_batch:
            raise AdtrError(f"batch of {n} is outside the engines' profile (max {self.max_batch})")
        f = np.ascontiguousarray(features, dtype=np.float32)
        st = self.stages[TRANSFORMER]
        host = self._host[FEATURES][0]
        host[:n] = f
        self.cuda.copy_to_device(self._device[FEATURES][0], host.ctypes.data, f.nbytes, st.stream)
        self._enqueue_transformer(n, 0)
        r = self._collect(n, 0, backbone=False)
        return r.anomaly_map, r.score
