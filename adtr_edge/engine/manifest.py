"""Engine folder manifest and the cache key that decides whether an engine may be reused.

An engine runs only on the GPU model and exact TensorRT version that built it, and it embeds the
precision, calibration and profile it was built with. The key hashes all of those; a matching key
means a rebuild would produce an equivalent engine, so ``build-engine`` skips it, and a mismatch
at load time is refused with the command that rebuilds it.

Layout of ``engines/<name>/``: ``backbone.engine``, ``transformer.engine``, ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..version import __version__
from ..errors import AdtrError
from ..fileio import sha256_file, write_json_atomic
from ..folder import ENGINE_FORMAT, MANIFEST, TENSORRT, engine_file, read_model_folder, rebuild_command, verify_engine_files
from ..metadata import GRAPHS


@dataclass(frozen=True)
class Profile:
    """Batch sizes of the one optimisation profile (the ``batch`` dim of each graph's input)."""

    min: int = 1
    opt: int = 1
    max: int = 4

    def __post_init__(self):
        if not (1 <= self.min <= self.opt <= self.max):
            raise AdtrError(f"batch profile must satisfy 1 <= min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}")

    def as_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. ``digest`` is the cache key."""

    graph: str
    onnx_sha256: str
    calibration_sha256: str | None
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[int, int, int]
    flags: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = list(self.profile)
        return d

    @property
    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(folder: Path) -> dict:
    """The manifest of an engine folder (adtr_edge.folder reads it), with both engines listed."""
    d = read_model_folder(folder, accept=(TENSORRT,), purpose="the TensorRT backend").manifest
    for g in GRAPHS:
        if g not in (d.get("engines") or {}):
            raise AdtrError(f"{Path(folder) / MANIFEST}: no '{g}' engine listed")
    return d


def write_manifest(folder: Path, *, name: str, source: str, meta: dict, trt_version: str, gpu: dict, engines: dict,
                   build_command: str) -> Path:
    doc = {
        "format": ENGINE_FORMAT,
        "toolkit_version": __version__,
        "kind": TENSORRT,
        "name": name,
        "source": source,
        "build_command": build_command,
        "trt_version": trt_version,
        "gpu": gpu,
        "engines": engines,
        "meta": meta,
    }
    return write_json_atomic(Path(folder) / MANIFEST, doc)


def existing_entry_matches(folder: Path, graph: str, key: EngineKey) -> bool:
    """True when ``folder`` already holds an intact engine for ``graph`` built with ``key``."""
    try:
        doc = read_manifest(folder)
    except AdtrError:
        return False
    entry = doc["engines"].get(graph, {})
    path = engine_file(folder, graph)
    return entry.get("key") == key.digest and path.is_file() and sha256_file(path) == entry.get("sha256")


def check_loadable(doc: dict, folder: Path, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Refuse engines built for another TensorRT version or GPU, naming both and the fix."""
    rebuild = rebuild_command(doc)
    built_v = doc.get("trt_version")
    if built_v != trt_version:
        raise AdtrError(f"{folder}: engines were built with TensorRT {built_v}, this is {trt_version}; rebuild with {rebuild}")
    gpu = doc.get("gpu", {})
    if gpu.get("name") != gpu_name or gpu.get("compute_capability") != compute_capability:
        raise AdtrError(
            f"{folder}: engines were built for {gpu.get('name')} (sm {gpu.get('compute_capability')}), this GPU is "
            f"{gpu_name} (sm {compute_capability}); rebuild with {rebuild}"
        )
    verify_engine_files(folder, doc)
