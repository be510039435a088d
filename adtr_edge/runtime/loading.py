"""Find and validate a model folder, and pick the backend that runs it.

Two kinds of folder carry a ``manifest.json`` (``"format": "adtr-edge/1"``):

* ``"kind": "onnx"``: what ``adtr-edge export`` writes (backbone.onnx, transformer.onnx); run by
  ONNX Runtime, on the CPU or on CUDA where onnxruntime-gpu is installed.
* ``"kind": "tensorrt"``: an engine folder built from such an export; run by TensorRT.

``backend="auto"`` follows the folder's kind; the choice and the reason are logged, because "why is
this running on the CPU?" is the first question on a device.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdtrError
from ..fileio import read_json, sha256_file
from ..metadata import FORMAT, GRAPHS, ModelMeta
from .backends.base import Backend

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
KINDS = ("onnx", "tensorrt")
ENGINE_FORMAT = "adtr-edge-engine/1"  # adtr_edge.engine.manifest.ENGINE_FORMAT, without importing engine/
BACKENDS = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class ModelFolder:
    """A validated model folder: where it is, what kind, its manifest and metadata."""

    path: Path
    kind: str
    manifest: dict[str, Any]
    meta: ModelMeta

    def graph_file(self, graph: str) -> Path:
        """Path of one graph's file as named by the manifest (must stay inside the folder)."""
        entry = self.manifest.get("graphs", {}).get(graph)
        if not isinstance(entry, dict) or not entry.get("file"):
            raise AdtrError(f"{self.path / MANIFEST}: no entry for graph '{graph}'")
        name = Path(str(entry["file"]))
        if name.is_absolute() or ".." in name.parts:
            raise AdtrError(f"{self.path / MANIFEST}: graph '{graph}' file {str(name)!r} must be a name inside the folder")
        return self.path / name


def read_model_folder(path: str | Path) -> ModelFolder:
    """Read ``path`` (a model folder, or its manifest.json) and check the manifest's shape."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    if not p.exists():
        raise AdtrError(f"model folder not found: {p}")
    if not p.is_dir():
        raise AdtrError(f"not a model folder (expected a folder with {MANIFEST}): {p}")
    manifest_path = p / MANIFEST
    manifest = read_json(manifest_path, missing=f"{p}: no {MANIFEST} (is this a folder written by 'adtr-edge export'?)")
    if not isinstance(manifest, dict):
        raise AdtrError(f"{manifest_path}: not an adtr-edge manifest (a JSON object is expected)")
    kind = manifest.get("kind")
    if kind == "onnx-qdq":  # Q/DQ INT8 graphs (adtr-edge quantize) are ONNX graphs to every runtime
        kind = "onnx"
    if kind not in KINDS:
        raise AdtrError(f"{manifest_path}: kind {kind!r}, expected one of {list(KINDS)}")
    # Engine folders have their own format and layout, checked by the TensorRT backend itself.
    expected_format = FORMAT if kind == "onnx" else ENGINE_FORMAT
    if manifest.get("format") != expected_format:
        raise AdtrError(f"{manifest_path}: format {manifest.get('format')!r}, expected {expected_format!r}")
    if kind == "onnx" and not isinstance(manifest.get("graphs"), dict):
        raise AdtrError(f"{manifest_path}: lacks 'graphs'")
    meta = ModelMeta.validate(manifest.get("meta"), str(manifest_path))
    return ModelFolder(p, kind, manifest, meta)


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


def verify_graph_files(folder: ModelFolder) -> None:
    """Every graph file exists and has the sha256 the manifest recorded (a mixed-up or partly
    copied folder would otherwise run with the wrong weights or thresholds)."""
    for graph in GRAPHS:
        f = folder.graph_file(graph)
        if not f.is_file():
            raise AdtrError(f"{folder.path / MANIFEST}: graph file missing: {f}")
        expected = folder.manifest["graphs"][graph].get("sha256")
        if not expected:
            raise AdtrError(f"{folder.path / MANIFEST}: graph '{graph}' has no sha256")
        actual = sha256_file(f)
        if actual != expected:
            raise AdtrError(
                f"{f}: sha256 {actual[:12]}... does not match {MANIFEST} ({str(expected)[:12]}...); "
                "the folder was modified or mixed with another export"
            )


# Only these keys decide what the graphs compute and how their outputs are read; a graph may add
# its own keys (its name, quantisation notes) without disagreeing with the manifest.
ESSENTIAL_META_KEYS = ("format", "model", "preprocess", "features", "postprocess")


def check_meta_agrees(graph_meta: ModelMeta, manifest_meta: ModelMeta, graph: str, source: str) -> None:
    """The metadata inside a graph says the same as the manifest (same model, same thresholds)."""
    if graph_meta.graph not in (None, graph):
        raise AdtrError(f"{source}: metadata says graph {graph_meta.graph!r}, the manifest lists it as {graph!r}")
    for key in ESSENTIAL_META_KEYS:
        if graph_meta.raw.get(key) != manifest_meta.raw.get(key):
            raise AdtrError(f"{source}: metadata '{key}' differs from {MANIFEST}; the graph belongs to another export")


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
    if folder.kind == "onnx":
        if backend == "tensorrt":
            raise AdtrError(
                f"{folder.path}: is an ONNX export; the tensorrt backend runs an engine folder built from it"
            )
        ok, why = _module_available("onnxruntime")
        if not ok:
            raise AdtrError(f"{folder.path}: ONNX export needs onnxruntime: {why} (pip install onnxruntime)")
        reason = "requested" if backend == "onnxruntime" else "the folder is an ONNX export"
        return "onnxruntime", reason
    # kind == "tensorrt"
    if backend == "onnxruntime":
        raise AdtrError(
            f"{folder.path}: is a TensorRT engine folder; onnxruntime runs the ONNX export it was built from"
        )
    ok, why = tensorrt_available()
    if not ok:
        raise AdtrError(f"{folder.path}: TensorRT engine folder, but TensorRT cannot run here: {why}")
    reason = "requested" if backend == "tensorrt" else "the folder holds TensorRT engines"
    return "tensorrt", f"{reason}; {why}"


def load_backend(path: str | Path, backend: str = "auto", **options) -> Backend:
    """Validate the folder at ``path``, choose a backend, construct it (not yet activated)."""
    folder = read_model_folder(path)
    name, why = choose_backend(folder, backend)
    log.info("backend %s for %s (%s)", name, folder.path, why)
    if name == "onnxruntime":
        from .backends.onnxruntime import OnnxRuntimeBackend as cls
    else:
        from .backends.tensorrt import TensorRTBackend as cls
    accepted = {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise AdtrError(f"backend option(s) {unknown} do not apply to the {name} backend (it takes {sorted(accepted)})")
    return cls(folder.path, **options)
