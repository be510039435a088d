"""Strict stand-in for ``pycuda`` (``pycuda.driver`` and ``pycuda.autoprimaryctx``).

Only names the real bindings define (src/wrapper/wrap_cudadrv.cpp, pycuda/autoprimaryctx.py; see
adtr_edge/engine/API_NOTES.md) exist here, with the real argument conventions: copies take a
buffer object on the host side and a device pointer (int or DeviceAllocation) on the other, the
stream argument must be a ``Stream`` or None, and every call needs a current context on the
calling thread (pycuda contexts are per thread). The "GPU" is host memory: ``mem_alloc`` hands out
the address of a ctypes buffer and copies really move the bytes, so a fake TensorRT engine reading
those addresses sees the data. Calls are recorded in ``driver._calls``.

Asynchronous like a GPU (and like the cuda-python stand-in): copies, event records, stream waits and
fake TensorRT engine runs (``enqueue``) are queued on their stream and run only when something waits
for them (``Stream.synchronize``, ``Event.synchronize``, ``Context.synchronize``, a stream waiting on
an event of another, the legacy default stream, or a free, which synchronises like cuMemFree). A copy
reads and writes host memory when it runs, not when it is queued, so host code that reuses a buffer
or reads a result without the right wait sees what a GPU would give it.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import importlib.util
import itertools
import sys
import threading
import time
import types
import weakref
from contextlib import contextmanager

import numpy as np


# Stream and event handles are unique across stand-in instances: the fake TensorRT finds a stream by
# the integer handle execute_async_v3 is given.
_HANDLES = itertools.count(0x7F000000, 0x100)
_STREAMS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def enqueue(handle: int, run, ptrs=()) -> bool:
    """Queue ``run`` (a fake TensorRT engine run) on the stand-in stream with this handle; False
    when no stand-in stream has it (the caller then runs it at once)."""
    stream = _STREAMS.get(int(handle))
    if stream is None:
        return False
    stream._enqueue(_Op(run, ptrs, "execute_async_v3"))
    return True


class _Op:
    """One queued operation; ``after`` is the event-record op a wait needs to have run."""

    def __init__(self, run=None, ptrs=(), label="", after=None):
        self.run, self.ptrs, self.label, self.after = run, tuple(ptrs), label, after
        self.done = False

    def ready(self):
        return self.after is None or self.after.done


def make_pycuda(gpu_name: str = "NVIDIA Fake Jetson", cc: tuple[int, int] = (7, 2), devices: int = 1) -> types.ModuleType:
    """A fake ``pycuda`` package whose ``driver`` attribute is the fake ``pycuda.driver``."""
    drv = types.ModuleType("pycuda.driver")
    drv._calls = []
    drv._initialised = False
    drv._tls = threading.local()  # per-thread context stack, as pycuda keeps it
    drv._allocations = {}  # address -> DeviceAllocation (live)
    drv._host = {}  # address -> HostAllocation (live)
    drv._orphans = []  # queued ops of destroyed streams (CUDA still runs them)

    class Error(Exception):
        pass

    class MemoryError(Error):  # noqa: A001 (the real module shadows the builtin too)
        pass

    class LogicError(Error):
        pass

    class LaunchError(Error):
        pass

    class RuntimeError(Error):  # noqa: A001
        pass

    drv.Error, drv.MemoryError, drv.LogicError, drv.LaunchError, drv.RuntimeError = (
        Error, MemoryError, LogicError, LaunchError, RuntimeError)

    def stack():
        if not hasattr(drv._tls, "stack"):
            drv._tls.stack = []
        return drv._tls.stack

    def need_context(what):
        drv._calls.append(what)
        if not drv._initialised:
            raise LogicError(f"{what} failed: initialization error")
        if not stack():
            raise LogicError(f"explicit_context_dependent failed: invalid device context - no currently active context? ({what})")

    def init(flags=0):
        drv._calls.append("init")
        drv._initialised = True

    drv.init = init

    class Device:
        def __init__(self, ordinal):
            drv._calls.append("Device")
            if not drv._initialised:
                raise LogicError("cuDeviceGet failed: initialization error")
            if not isinstance(ordinal, int) or not 0 <= ordinal < devices:
                raise LogicError("cuDeviceGet failed: invalid device ordinal")
            self._ordinal = ordinal

        @staticmethod
        def count():
            if not drv._initialised:
                raise LogicError("cuDeviceGetCount failed: initialization error")
            return devices

        def name(self):
            return gpu_name

        def compute_capability(self):
            return cc

        def total_memory(self):
            return 8 << 30

        def retain_primary_context(self):
            return Context(self)

        def make_context(self, flags=0):
            ctx = Context(self)
            ctx.push()
            return ctx

        def __eq__(self, other):
            return isinstance(other, Device) and other._ordinal == self._ordinal

        def __ne__(self, other):
            return not self == other

        def __hash__(self):
            return hash(self._ordinal)

    class Context:
        def __init__(self, device):
            self._device = device

        def push(self):
            drv._calls.append("Context.push")
            stack().append(self)

        @staticmethod
        def pop():
            if not stack():
                raise LogicError("cuCtxPopCurrent failed: invalid device context")
            stack().pop()

        @staticmethod
        def get_device():
            if not stack():
                raise LogicError("cuCtxGetDevice failed: invalid device context")
            return stack()[-1]._device

        @staticmethod
        def get_current():
            return stack()[-1] if stack() else None

        @staticmethod
        def synchronize():
            need_context("Context.synchronize")
            drain_all()

        def detach(self):
            if self in stack():
                stack().remove(self)

    drv.Device, drv.Context = Device, Context

    # -- the queues: ops run only when something waits for them ---------------------------------
    def queues():
        return [st._queue for st in list(drv._streams)] + [drv._orphans]

    def run_op(op):
        if op.run is not None:
            op.run()
        op.done = True

    def drain(finished, target=None):
        """Run ready head-of-queue ops (``target``'s first) until ``finished()``; a wait on work that
        never comes is an error, as a hang would be on a GPU."""
        while not finished():
            order = ([target] if target is not None else []) + [q for q in queues() if q is not target]
            for q in order:
                if q and q[0].ready():
                    run_op(q.pop(0))
                    break
            else:
                raise LogicError("stand-in: waiting for work that can never run (a stream waits on an event "
                                 "whose record is queued behind it)")

    def drain_all():
        drain(lambda: not any(queues()))

    drv._streams = weakref.WeakSet()

    class DeviceAllocation:
        def __init__(self, nbytes):
            self._buf = (ctypes.c_byte * nbytes)()
            self._ptr = ctypes.addressof(self._buf)
            self._nbytes = nbytes

        def __int__(self):
            return self._ptr

        __index__ = __int__

        def free(self):
            drv._calls.append("DeviceAllocation.free")
            drain_all()  # cuMemFree waits for the work queued before it
            if drv._allocations.pop(self._ptr, None) is None:
                raise LogicError("cuMemFree failed: invalid value (freed twice)")

    class HostAllocation:
        """Page-locked memory; the array ``pagelocked_empty`` returns has it as its ``.base``."""

        def __init__(self, shape, dtype):
            self._shape, self._dtype = shape, np.dtype(dtype)
            self._nbytes = max(int(np.prod(shape)) * self._dtype.itemsize, 1)
            self._buf = (ctypes.c_byte * self._nbytes)()
            self._ptr = ctypes.addressof(self._buf)

        @property
        def __array_interface__(self):  # how numpy adopts this object as an array's base
            return {"shape": self._shape, "typestr": self._dtype.str, "data": (self._ptr, False), "version": 3}

        def free(self):
            drv._calls.append("HostAllocation.free")
            drain_all()  # cuMemFreeHost waits for the work queued before it
            if drv._host.pop(self._ptr, None) is None:
                raise LogicError("cuMemFreeHost failed: invalid value (freed twice)")

        def get_flags(self):
            return 0

    drv.DeviceAllocation = DeviceAllocation
    drv.PagelockedHostAllocation = drv.HostAllocation = HostAllocation

    def mem_alloc(bytesize):
        need_context("mem_alloc")
        if not isinstance(bytesize, int) or bytesize < 1:
            raise LogicError("cuMemAlloc failed: invalid value")
        alloc = DeviceAllocation(bytesize)
        drv._allocations[alloc._ptr] = alloc
        return alloc

    def mem_get_info():
        need_context("mem_get_info")
        used = sum(a._nbytes for a in drv._allocations.values())
        return (8 << 30) - used, 8 << 30

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
        need_context("pagelocked_empty")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        host = HostAllocation(shape, dtype)
        drv._host[host._ptr] = host
        arr = np.asarray(host)
        assert arr.base is host
        return arr

    drv.mem_alloc, drv.mem_get_info, drv.pagelocked_empty = mem_alloc, mem_get_info, pagelocked_empty

    def device_span(ptr, nbytes, what):
        """The device allocation holding [ptr, ptr+nbytes), as the driver would validate it."""
        if isinstance(ptr, DeviceAllocation):
            ptr = ptr._ptr
        if isinstance(ptr, bool) or not isinstance(ptr, int):
            raise TypeError(f"{what}: device pointer must be an int or DeviceAllocation, got {type(ptr).__name__}")
        for base, alloc in drv._allocations.items():
            if base <= ptr and ptr + nbytes <= base + alloc._nbytes:
                return ptr
        raise LogicError(f"{what} failed: invalid argument (not inside a live device allocation)")

    def host_view(obj, writable, what):
        try:
            mv = memoryview(obj)
        except TypeError:
            raise TypeError(f"{what}: host side must support the buffer protocol, got {type(obj).__name__}") from None
        if not mv.contiguous:
            raise TypeError(f"{what}: host buffer must be contiguous")
        if writable and mv.readonly:
            raise TypeError(f"{what}: host buffer is read-only")
        return np.frombuffer(mv.cast("B"), dtype=np.uint8)

    def check_stream(stream, what):
        if stream is not None and not isinstance(stream, Stream):
            raise TypeError(f"{what}: stream must be a pycuda.driver.Stream or None, got {type(stream).__name__}")

    def submit(stream, op):
        if stream is None:  # the legacy default stream: waits for all other work, and runs now
            drain_all()
            run_op(op)
        else:
            stream._enqueue(op)

    def memcpy_htod_async(dest, src, stream=None):
        need_context("memcpy_htod_async")
        check_stream(stream, "memcpy_htod_async")
        host = host_view(src, False, "memcpy_htod_async")
        ptr = device_span(dest, host.nbytes, "cuMemcpyHtoDAsync")
        # The host bytes are read when the copy runs, not now.
        submit(stream, _Op(lambda: ctypes.memmove(ptr, host.ctypes.data, host.nbytes), (ptr,), "memcpy_htod_async"))

    def memcpy_dtoh_async(dest, src, stream=None):
        need_context("memcpy_dtoh_async")
        check_stream(stream, "memcpy_dtoh_async")
        host = host_view(dest, True, "memcpy_dtoh_async")
        ptr = device_span(src, host.nbytes, "cuMemcpyDtoHAsync")
        submit(stream, _Op(lambda: ctypes.memmove(host.ctypes.data, ptr, host.nbytes), (ptr,), "memcpy_dtoh_async"))

    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    drv.memcpy_htod = lambda dest, src: memcpy_htod_async(dest, src)
    drv.memcpy_dtoh = lambda dest, src: memcpy_dtoh_async(dest, src)

    class Stream:
        def __init__(self, flags=0):
            need_context("Stream")
            self._flags = flags
            self._handle = next(_HANDLES)
            self._queue = []
            drv._live_streams.add(self._handle)
            drv._streams.add(self)
            _STREAMS[self._handle] = self

        def __del__(self):  # cuStreamDestroy when the object goes; its queued work still runs
            drv._live_streams.discard(self._handle)
            drv._orphans.extend(self._queue)

        def _enqueue(self, op):
            self._queue.append(op)

        @property
        def handle(self):
            return self._handle

        def synchronize(self):
            need_context("Stream.synchronize")
            drain(lambda: not self._queue, self._queue)

        def is_done(self):
            return not self._queue

        def wait_for_event(self, evt):
            need_context("Stream.wait_for_event")
            if not isinstance(evt, Event):
                raise TypeError("wait_for_event needs an Event")
            self._enqueue(_Op(label="wait_for_event", after=evt._pending))

    class Event:
        def __init__(self, flags=0):
            need_context("Event")
            self._time = None
            self._pending = None  # the queued record op not yet run
            self._handle = next(_HANDLES)

        def record(self, stream=None):
            need_context("Event.record")
            check_stream(stream, "Event.record")

            def stamp():
                self._time = time.perf_counter()
            op = _Op(stamp, label="Event.record")
            self._pending = op
            submit(stream, op)
            return self

        def synchronize(self):
            op = self._pending
            if op is not None and not op.done:
                queue = next((st._queue for st in list(drv._streams) if op in st._queue), None)
                drain(lambda: op.done, queue)
            return self

        def query(self):
            return self._pending is None or self._pending.done

        def time_since(self, start):
            return start.time_till(self)

        def time_till(self, end):
            need_context("Event.time_till")
            if self._time is None and self._pending is None or end._time is None and end._pending is None:
                raise LogicError("cuEventElapsedTime failed: invalid resource handle (event not recorded)")
            if not (self.query() and end.query()):
                raise LogicError("cuEventElapsedTime failed: device not ready (the recorded work has not run)")
            return (end._time - self._time) * 1e3

        @property
        def handle(self):
            return self._handle

    drv._live_streams = set()
    drv.Stream, drv.Event = Stream, Event

    pkg = types.ModuleType("pycuda")
    pkg.__path__ = []  # a package, so "pycuda.driver" and "pycuda.autoprimaryctx" resolve under it
    pkg.driver = drv
    return pkg


def primary_context(drv):
    """What importing ``pycuda.autoprimaryctx`` does: init, retain device 0's primary context, push it."""
    drv.init()
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    return ctx


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the fake package's modules to ``import``; autoprimaryctx runs its side effect on load."""

    def __init__(self, pkg):
        self.pkg = pkg

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx"):
            return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "pycuda")
        return None

    def create_module(self, spec):
        if spec.name == "pycuda":
            return self.pkg
        if spec.name == "pycuda.driver":
            return self.pkg.driver
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        if module.__name__ == "pycuda.autoprimaryctx":
            module.context = primary_context(self.pkg.driver)
            module.device = module.context.get_device()
            self.pkg.autoprimaryctx = module


@contextmanager
def importable(pkg):
    """Make ``import pycuda.autoprimaryctx`` / ``pycuda.driver`` load ``pkg`` for the duration."""
    names = ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx")
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    finder = _Finder(pkg)
    sys.meta_path.insert(0, finder)
    try:
        yield pkg
    finally:
        sys.meta_path.remove(finder)
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)
