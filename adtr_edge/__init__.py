"""adtr-edge: ADTR anomaly detection from training to TensorRT engines on edge GPUs.

The public top level (everything else is reached through its module)::

    from adtr_edge import Detector

    with Detector.load("engines/orin-fp16/") as det:   # or an ONNX export / Q/DQ folder
        d = det(frame_bgr)                              # a Detection

* ``Detector``, ``Detection``: the embedding API (``adtr_edge.runtime.detector``, docs/embedding.md);
* ``read_model_folder``, ``ModelFolder``: what a model folder is (``adtr_edge.folder``);
* ``AdtrError``: the one error type; its message is one line naming the file, option or value;
* ``__version__``.

The names are loaded on first use, so ``import adtr_edge`` (and ``adtr-edge --help``) stays light:
no onnxruntime, no OpenCV, no torch until something needs them.
"""

from .errors import AdtrError
from .version import __version__

__all__ = ["AdtrError", "Detection", "Detector", "ModelFolder", "__version__", "read_model_folder"]

_LAZY = {
    "Detector": "adtr_edge.runtime.detector",
    "Detection": "adtr_edge.runtime.detector",
    "ModelFolder": "adtr_edge.folder",
    "read_model_folder": "adtr_edge.folder",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adtr_edge' has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
