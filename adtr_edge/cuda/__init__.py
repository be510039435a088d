"""CUDA for the engine builder (INT8 calibration copies) and the TensorRT backend: one low room
both import, so ``engine/`` no longer reaches up into ``runtime/``.

``make_cuda_runtime`` returns a ``CudaMemory`` (``base.py``) from cuda-python (``cudart.py``) or,
where only pycuda is installed, from pycuda (``pycuda_binding.py``). The bindings' own modules are
imported only when a runtime is made; nothing here imports torch or tensorrt.
"""

from __future__ import annotations

from typing import Tuple

from ..errors import AdtrError
from . import cudart, pycuda_binding
from .base import CUDA_BINDINGS, CudaGraphs, CudaMemory, DeviceInfo, stream_handle
from .cudart import CudaRuntime
from .pycuda_binding import PycudaRuntime

__all__ = ["CUDA_BINDINGS", "CudaGraphs", "CudaMemory", "CudaRuntime", "DeviceInfo", "PycudaRuntime",
           "gpu_available", "make_cuda_runtime", "stream_handle"]


def make_cuda_runtime(prefer: str = "auto") -> CudaMemory:
    """A ``CudaRuntime`` (cuda-python) or ``PycudaRuntime``: ``auto`` tries cuda-python, then pycuda."""
    if prefer not in CUDA_BINDINGS:
        raise AdtrError(f"--cuda-binding {prefer!r}: choose one of {', '.join(CUDA_BINDINGS)}")
    # Through the modules, not names bound here: tests replace the importers with stand-ins.
    if prefer == "cuda-python":
        return cudart.CudaRuntime()
    if prefer == "pycuda":
        return pycuda_binding.PycudaRuntime()
    try:
        rt = cudart.import_cudart()
    except AdtrError as e:
        why_cuda_python = str(e)
    else:
        return cudart.CudaRuntime(rt)
    try:
        driver, context = pycuda_binding.import_pycuda()
    except AdtrError as e:
        raise AdtrError(f"no CUDA binding for Python: {why_cuda_python}; and {e}") from None
    return pycuda_binding.PycudaRuntime(driver, context)


def gpu_available(prefer: str = "auto") -> Tuple[bool, str]:
    """Whether a CUDA binding (cuda-python or pycuda) imports and at least one GPU answers."""
    try:
        rt = make_cuda_runtime(prefer)
        n = rt.device_count()
    except AdtrError as e:
        return False, str(e)
    except Exception as e:  # a broken driver install raises from the bindings themselves
        return False, f"CUDA is not usable: {e}"
    if n < 1:
        return False, "no CUDA GPU found"
    return True, rt.device_info(0).name
