"""Device memory, streams, events and CUDA graphs through cuda-python's runtime API (``CudaRuntime``).

Two import spellings exist: ``from cuda.bindings import runtime`` (cuda-python 12.x+, the only one
in 13) and ``from cuda import cudart`` (JetPack 5's cuda-python 11.4). Every call returns a tuple
whose first item is a ``cudaError_t``; ``CudaRuntime`` checks it and turns failures into one clear
``AdtrError``. Where pycuda is the binding a device has, ``pycuda_binding.PycudaRuntime`` offers the
same methods (``adtr_edge.cuda.base.CudaMemory``); ``adtr_edge.cuda.make_cuda_runtime`` picks one.
Nothing here imports torch or tensorrt.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from ..errors import AdtrError
from .base import DeviceInfo, stream_handle


def import_cudart():
    """Return cuda-python's runtime module under whichever name this install has."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415

        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # noqa: PLC0415  (cuda-python < 12.6 / JetPack 5)

        return cudart
    except ImportError as e:
        raise AdtrError(f"cuda-python is not installed ({e}); install it with 'pip install cuda-python'") from None


class CudaRuntime:
    """Thin checked wrapper over a cudart module (real or a test stand-in)."""

    name = "cuda-python"
    supports_graphs = True
    graphs_unsupported_reason = ""

    def __init__(self, cudart: Any | None = None):
        self.rt = cudart if cudart is not None else import_cudart()
        self._success = self.rt.cudaError_t.cudaSuccess
        self._insufficient = getattr(self.rt.cudaError_t, "cudaErrorInsufficientDriver", None)
        self.check_driver()

    # -- start-up: do the bindings fit the driver? ---------------------------------------------
    def versions(self) -> tuple[int, int]:
        """(driver's CUDA version, runtime's CUDA version) as CUDA encodes them: 12040 = 12.4."""
        try:
            derr, driver = self.rt.cudaDriverGetVersion()
            rerr, runtime = self.rt.cudaRuntimeGetVersion()
        except RuntimeError as e:  # cuda-python 11.x raises "Failed to dlopen libcuda.so.1" where no driver is installed
            raise AdtrError(f"{no_driver_message()} (cuda-python: {e})") from None
        if derr != self._success:
            driver = 0
        if rerr != self._success:
            runtime = 0
        return int(driver), int(runtime)

    def check_driver(self) -> None:
        """Refuse bindings built for a newer CUDA major than the driver supports, in one line.

        cuda-python's major follows the CUDA it wraps, and an unpinned ``pip install cuda-python``
        gets 13.x, which needs driver >= 580; CUDA's minor-version compatibility covers newer
        minors of the same major only. Without this check the first cudaMalloc fails with a bare
        cudaErrorInsufficientDriver.
        """
        driver, runtime = self.versions()
        if driver == 0:
            return  # no driver at all: the device calls report it (cudaErrorNoDevice / InsufficientDriver)
        if runtime // 1000 > driver // 1000 or self._probe_insufficient():
            raise AdtrError(driver_mismatch_message(driver, runtime))

    def _probe_insufficient(self) -> bool:
        if self._insufficient is None:
            return False
        return self.rt.cudaGetDeviceCount()[0] == self._insufficient

    def check(self, result, what: str):
        """Unpack (err, *values); raise on error; return None, the value or a tuple of values."""
        if isinstance(result, tuple):
            err, values = result[0], result[1:]
        else:
            err, values = result, ()
        if err != self._success:
            if self._insufficient is not None and err == self._insufficient:
                driver, runtime = self.versions()
                # Driver version 0: there is no driver at all, so no cuda-python pin can help.
                why = driver_mismatch_message(driver, runtime) if driver else no_driver_message()
                raise AdtrError(f"CUDA call {what} failed: {why}")
            name = err
            try:
                name = self.rt.cudaGetErrorName(err)[1].decode()
            except Exception:  # a name lookup must not hide the original error
                pass
            raise AdtrError(f"CUDA call {what} failed: {name}")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    # -- device ----------------------------------------------------------------------------
    def device_count(self) -> int:
        return int(self.check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def device_info(self, index: int | None = None) -> DeviceInfo:
        if index is None:
            index = int(self.check(self.rt.cudaGetDevice(), "cudaGetDevice"))
        props = self.check(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = props.name
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
        return DeviceInfo(index, str(name).strip(), f"{int(props.major)}.{int(props.minor)}")

    # -- memory ----------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr), "cudaFree")

    def pinned_array(self, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, int]:
        """Page-locked host memory viewed as a numpy array (async copies need pinned memory)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self.check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost"))
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        arr = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        return arr, ptr

    def free_host(self, ptr: int) -> None:
        self.check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(H2D)")

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync(D2H)")

    # -- streams and events ----------------------------------------------------------------
    def create_stream(self):
        # Non-blocking: must not serialise with the legacy default stream other libraries use.
        return self.check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    def destroy_stream(self, stream) -> None:
        self.check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def stream_handle(self, stream) -> int:
        return stream_handle(stream)

    def synchronize(self, stream) -> None:
        self.check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def create_event(self):
        return self.check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def destroy_event(self, event) -> None:
        self.check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def record(self, event, stream) -> None:
        self.check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event) -> None:
        self.check(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def wait_event(self, stream, event) -> None:
        self.check(self.rt.cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")

    def elapsed_ms(self, start, end) -> float:
        return float(self.check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    # -- CUDA graphs -----------------------------------------------------------------------
    def begin_capture(self, stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        return self.check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")

    def instantiate(self, graph):
        return self.check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph_exec, stream) -> None:
        self.check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph, graph_exec=None) -> None:
        """Destroy a graph and its executable (None when it never got one: a failed capture)."""
        if graph_exec is not None:
            self.check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        self.check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}" if version else "unknown"


def binding_pin_for_driver(driver_version: int) -> str:
    """The cuda-python line whose CUDA major this driver supports (11.x from 11.4, JetPack 5)."""
    major = driver_version // 1000
    if major <= 11:
        return "cuda-python>=11.4,<12"
    return f"cuda-python>={major},<{major + 1}"


def _bindings_version() -> str | None:
    from importlib import metadata  # noqa: PLC0415

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def no_driver_message() -> str:
    return ("no NVIDIA driver is loaded on this machine (cudaDriverGetVersion reports none): install the NVIDIA driver "
            "(on Jetson it comes with JetPack), or run without a GPU through ONNX Runtime")


def driver_mismatch_message(driver_version: int, runtime_version: int) -> str:
    installed = _bindings_version() or "cuda-python"
    return (f"{installed} is built for CUDA {_cuda_text(runtime_version)} but the NVIDIA driver supports CUDA "
            f"{_cuda_text(driver_version)} (cudaDriverGetVersion = {driver_version}); install matching bindings with "
            f'pip install "{binding_pin_for_driver(driver_version)}" (cuda-python 13 needs driver >= 580), or update the driver')
