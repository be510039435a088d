"""Find a model folder to run, and pick the backend that runs it.

What a folder is (its kind, manifest and graph files) is decided by ``adtr_edge.folder``, the
one reader every command uses; the runtime runs its ``RUNTIME_KINDS``: ONNX exports and Q/DQ
exports on ONNX Runtime (CPU, or CUDA where onnxruntime-gpu is installed), engine folders on
TensorRT. A checkpoint needs torch, which the runtime never imports: it is refused with the fix.

``backend="auto"`` follows the kind table; the choice and the reason are logged, because "why is
this running on the CPU?" is the first question on a device.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path

from ..errors import AdtrError
from ..folder import (  # noqa: F401  (re-exported: the runtime's view of a folder)
    ENGINE_FORMAT,
    KINDS,
    MANIFEST,
    RUNTIME_KINDS,
    ModelFolder,
    check_meta_agrees,
    read_model_folder,
    verify_graph_files,
)
from .backends.base import Backend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "triton")


ENGINES_DIR = Path("engines")  # where 'adtr-edge build-engine' writes engine folders by default
DEMO_EXPORT = Path("adtr-demo") / "onnx"  # what 'adtr-edge demo' exports


def default_model_dir(cwd: str | Path | None = None) -> Path:
    """The model folder to use when none is given: the only engine folder under ./engines/,
    else ./adtr-demo/onnx. Relative to ``cwd`` (default: the current directory)."""
    root = Path(cwd) if cwd is not None else Path()
    engines_dir = root / ENGINES_DIR
    found = sorted(d for d in engines_dir.iterdir() if (d / MANIFEST).is_file()) if engines_dir.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(str(d) for d in found)
        raise AdtrError(f"several engine folders under {engines_dir}/ ({names}); pass the one to run as MODEL_DIR")
    if (root / DEMO_EXPORT).is_dir():
        return root / DEMO_EXPORT
    raise AdtrError(
        f"no model folder given and none found ({engines_dir}/<name>/ with {MANIFEST}, or {root / DEMO_EXPORT}); "
        "pass MODEL_DIR (make one with 'adtr-edge demo' or 'adtr-edge build-engine')"
    )


def _module_available(name: str) -> tuple[bool, str]:
    try:
        importlib.import_module(name)
    except Exception as e:  # an ImportError, or a broken native library
        return False, f"cannot import {name} ({e.__class__.__name__}: {e})"
    return True, f"{name} is importable"


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason) from the TensorRT backend module, tolerating its absence."""
    try:
        from .backends import tensorrt as trt_backend
    except Exception as e:
        return False, f"TensorRT backend unavailable ({e.__class__.__name__}: {e})"
    try:
        ok, reason = trt_backend.available()
    except Exception as e:
        return False, f"TensorRT check failed ({e.__class__.__name__}: {e})"
    return bool(ok), str(reason)


def choose_backend(folder: ModelFolder, backend: str = "auto") -> tuple[str, str]:
    """(backend name, why) for ``folder``; raise AdtrError when the request cannot be met."""
    if backend not in BACKENDS:
        raise AdtrError(f"--backend {backend!r}: choose one of {list(BACKENDS)}")
    if folder.kind not in RUNTIME_KINDS:
        raise AdtrError(f"{folder.path}: is {folder.spec.what}; the runtime runs an ONNX export of it "
                        f"(adtr-edge export {folder.path} --out DIR) or engines built from that")
    if backend == "triton":
        from .backends.triton import available

        ok, why = available()
        if not ok:
            raise AdtrError(f"--backend triton: {why}")
        return "triton", f"requested; the server runs the graphs, {folder.path} gives the metadata to check it against"
    natural = folder.backend
    if backend not in ("auto", natural):
        if natural == "onnxruntime":
            raise AdtrError(f"{folder.path}: is {folder.spec.what}; the tensorrt backend runs an engine folder built from it")
        raise AdtrError(f"{folder.path}: is {folder.spec.what}; onnxruntime runs the ONNX export it was built from")
    ok, why = _module_available("onnxruntime") if natural == "onnxruntime" else tensorrt_available()
    if not ok:
        if natural == "onnxruntime":
            raise AdtrError(f"{folder.path}: ONNX export needs onnxruntime: {why} (pip install onnxruntime)")
        raise AdtrError(f"{folder.path}: TensorRT engine folder, but TensorRT cannot run here: {why}")
    if backend != "auto":
        return natural, "requested" if natural == "onnxruntime" else f"requested; {why}"
    if natural == "onnxruntime":
        return natural, f"the folder is {folder.spec.what}"
    return natural, f"the folder holds TensorRT engines; {why}"


def load_backend(path: str | Path, backend: str = "auto", **options) -> Backend:
    """Validate the folder at ``path``, choose a backend, construct it (not yet activated)."""
    folder = read_model_folder(path)
    name, why = choose_backend(folder, backend)
    log.info("backend %s for %s (%s)", name, folder.path, why)
    if name == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeBackend as cls
    elif name == "triton":
        from .backends.triton import TritonBackend as cls
    else:
        from .backends.tensorrt import TensorRTBackend as cls
    accepted = {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise AdtrError(f"backend option(s) {unknown} do not apply to the {name} backend (it takes {sorted(accepted)})")
    return cls(folder.path, **options)
