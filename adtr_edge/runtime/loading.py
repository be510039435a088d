"""Find a model folder to run, and pick the backend that runs it.

What a folder is (its kind, manifest and graph files) is decided by ``adtr_edge.folder``, the
one reader every command uses; the runtime runs its ``RUNTIME_KINDS``: ONNX exports and Q/DQ
exports on ONNX Runtime (CPU, or CUDA where onnxruntime-gpu is installed), engine folders on
TensorRT. A checkpoint needs torch, which the runtime never imports: it is refused with the fix.

``backend="auto"`` follows the kind table; which backend runs which kinds, how each is probed and
opened is ``registry.BACKENDS``; the choice and the reason are logged, because "why is
this running on the CPU?" is the first question on a device.
"""

from __future__ import annotations

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
from . import registry
from .backends.base import Backend

log = logging.getLogger(__name__)

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


def tensorrt_available() -> tuple[bool, str]:
    """(available, reason) of the TensorRT backend (its registry probe), tolerating its absence."""
    return registry.backend("tensorrt").available()


def choose_backend(folder: ModelFolder, backend: str = "auto") -> tuple[str, str]:
    """(backend name, why) for ``folder``; raise AdtrError when the request cannot be met.
    ``auto`` picks the folder kind's backend; an explicit one must run the folder's kind
    (``registry.BACKENDS``)."""
    registry.check_choice(registry.STREAM, backend)
    if folder.kind not in RUNTIME_KINDS:
        raise AdtrError(f"{folder.path}: is {folder.spec.what}; the runtime runs an ONNX export of it "
                        f"(adtr-edge export {folder.path} --out DIR) or engines built from that")
    asked = registry.backend(backend) if backend != "auto" else None
    if asked is not None and asked.remote:
        ok, why = asked.available()
        if not ok:
            raise AdtrError(asked.say(asked.missing, folder, why))
        return asked.name, asked.say(asked.requested, folder, why)
    entry = asked or registry.backend(folder.backend)
    if folder.kind not in entry.kinds:
        hint = entry.other_folder or f"the {entry.name} backend runs {', '.join(entry.kinds)} folders"
        raise AdtrError(f"{folder.path}: is {folder.spec.what}; {hint}")
    ok, why = entry.available()
    if not ok:
        raise AdtrError(entry.say(entry.missing, folder, why))
    return entry.name, entry.say(entry.picked if asked is None else entry.requested, folder, why)


def load_backend(path: str | Path, backend: str = "auto", **options) -> Backend:
    """Validate the folder at ``path``, choose a backend, construct it (not yet activated)."""
    folder = read_model_folder(path)
    name, why = choose_backend(folder, backend)
    log.info("backend %s for %s (%s)", name, folder.path, why)
    return registry.backend(name).open(folder.path, **options)
