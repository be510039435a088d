"""The CUDA memory interface (``adtr_edge.cuda.base.CudaMemory``) over pycuda, for devices where pycuda is the CUDA binding installed.

``import pycuda.autoprimaryctx`` retains and pushes the device's *primary* context, the one the
CUDA runtime API (and so TensorRT) uses; ``pycuda.autoinit`` would create a separate context and
TensorRT's enqueues would then not see pycuda's allocations. Device pointers are handed out as
integers like the cuda-python runtime does: the ``DeviceAllocation`` objects are kept here, keyed
by address, until ``free``. pycuda has no stream capture, so ``supports_graphs`` is False and the
TensorRT backend runs without CUDA graphs (it logs why). Nothing here imports torch or tensorrt.
"""

from __future__ import annotations

import ctypes
import importlib
import threading
from typing import Any

import numpy as np

from ..errors import AdtrError
from .base import DeviceInfo

# cuda.h: CU_STREAM_NON_BLOCKING. pycuda's Stream(flags) passes the value to cuStreamCreate and has
# no named constant for it.
CU_STREAM_NON_BLOCKING = 0x1


def import_pycuda():
    """Import pycuda with the primary context pushed; return (pycuda.driver, that context)."""
    try:
        ctx_module = importlib.import_module("pycuda.autoprimaryctx")
        driver = importlib.import_module("pycuda.driver")
    except ImportError as e:
        raise AdtrError(f"pycuda is not installed ({e}); install it with 'pip install pycuda'") from None
    except Exception as e:  # cuInit failed, no device: pycuda raises its own errors at import
        raise AdtrError(f"pycuda cannot open the GPU ({e.__class__.__name__}: {e})") from None
    return driver, ctx_module.context


class PycudaRuntime:
    """Same methods as ``CudaRuntime`` (graph capture aside), backed by ``pycuda.driver``."""

    name = "pycuda"
    supports_graphs = False
    graphs_unsupported_reason = "pycuda has no CUDA stream capture"

    def __init__(self, driver: Any | None = None, context: Any | None = None):
        if driver is None:
            driver, context = import_pycuda()
        self.drv = driver
        self.context = context if context is not None else driver.Context.get_current()
        if self.context is None:
            raise AdtrError("pycuda has no current CUDA context; import pycuda.autoprimaryctx before creating the runtime")
        self._allocations: dict[int, Any] = {}  # device address -> DeviceAllocation
        self._pinned: dict[int, np.ndarray] = {}  # host address -> page-locked array (its .base frees it)
        self._live: set = set()  # streams and events: pycuda destroys them when the object goes
        self._bound = threading.local()

    def _call(self, what: str, fn, *args):
        """Run a pycuda call with the context current on this thread; pycuda errors -> AdtrError."""
        if not getattr(self._bound, "done", False):
            # pycuda contexts are per thread; the runtime API TensorRT uses would silently pick
            # the primary context anyway, so bind the same one here for threads other than the importer's.
            if self.drv.Context.get_current() is None:
                self.context.push()
            self._bound.done = True
        try:
            return fn(*args)
        except self.drv.Error as e:
            raise AdtrError(f"CUDA call {what} (pycuda) failed: {e}") from None

    # -- device ----------------------------------------------------------------------------
    def device_count(self) -> int:
        return int(self._call("Device.count", self.drv.Device.count))

    def device_info(self, index: int | None = None) -> DeviceInfo:
        if index is None:
            dev = self._call("Context.get_device", self.drv.Context.get_device)
            index = next(i for i in range(self.device_count()) if self.drv.Device(i) == dev)
        else:
            dev = self._call("Device", self.drv.Device, index)
        major, minor = self._call("Device.compute_capability", dev.compute_capability)
        return DeviceInfo(index, str(self._call("Device.name", dev.name)).strip(), f"{int(major)}.{int(minor)}")

    # -- memory ----------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        alloc = self._call("mem_alloc", self.drv.mem_alloc, max(int(nbytes), 1))
        ptr = int(alloc)
        self._allocations[ptr] = alloc
        return ptr

    def free(self, ptr: int) -> None:
        alloc = self._allocations.pop(int(ptr), None)
        if alloc is None:
            raise AdtrError(f"CUDA free of {int(ptr):#x} (pycuda): not an allocation of this runtime")
        self._call("DeviceAllocation.free", alloc.free)

    def pinned_array(self, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, int]:
        arr = self._call("pagelocked_empty", self.drv.pagelocked_empty, tuple(int(s) for s in shape), np.dtype(dtype))
        ptr = int(arr.ctypes.data)
        self._pinned[ptr] = arr
        return arr, ptr

    def free_host(self, ptr: int) -> None:
        arr = self._pinned.pop(int(ptr), None)
        if arr is None:
            raise AdtrError(f"CUDA free_host of {int(ptr):#x} (pycuda): not a pinned array of this runtime")
        self._call("HostAllocation.free", arr.base.free)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream) -> None:
        # pycuda copies from a buffer object; view the caller's host address as one.
        host = (ctypes.c_char * int(nbytes)).from_address(int(src))
        self._call("memcpy_htod_async", self.drv.memcpy_htod_async, int(dst), host, stream)

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream) -> None:
        host = (ctypes.c_char * int(nbytes)).from_address(int(dst))
        self._call("memcpy_dtoh_async", self.drv.memcpy_dtoh_async, host, int(src), stream)

    # -- streams and events ----------------------------------------------------------------
    def create_stream(self):
        # Non-blocking: must not serialise with the legacy default stream other libraries use.
        stream = self._call("Stream", self.drv.Stream, CU_STREAM_NON_BLOCKING)
        self._live.add(stream)
        return stream

    def destroy_stream(self, stream) -> None:
        # pycuda calls cuStreamDestroy when the last reference goes; this runtime drops its own.
        self._live.discard(stream)

    def stream_handle(self, stream) -> int:
        """TensorRT's execute_async_v3 takes the CUstream as an integer."""
        return int(stream.handle)

    def synchronize(self, stream) -> None:
        self._call("Stream.synchronize", stream.synchronize)

    def create_event(self):
        event = self._call("Event", self.drv.Event)
        self._live.add(event)
        return event

    def destroy_event(self, event) -> None:
        self._live.discard(event)

    def record(self, event, stream) -> None:
        self._call("Event.record", event.record, stream)

    def event_synchronize(self, event) -> None:
        self._call("Event.synchronize", event.synchronize)

    def wait_event(self, stream, event) -> None:
        self._call("Stream.wait_for_event", stream.wait_for_event, event)

    def elapsed_ms(self, start, end) -> float:
        return float(self._call("Event.time_till", start.time_till, end))
