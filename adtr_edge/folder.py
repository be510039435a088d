"""What a model folder is: the one table of folder kinds and the one reader every command uses.

The toolkit writes four kinds of folder, and every command that takes a model folder reads it
here, so they agree on what they accept (``bench`` once refused the Q/DQ folders ``stream`` ran):

==========  =====================  ==========================  ===========  ===========
kind        written by             format (manifest.json)      files        runs on
==========  =====================  ==========================  ===========  ===========
onnx        adtr-edge export       adtr-edge/1                 graphs       onnxruntime
onnx-qdq    adtr-edge quantize     adtr-edge/1                 graphs       onnxruntime
tensorrt    adtr-edge build-engine adtr-edge-engine/1          engines      tensorrt
checkpoint  adtr-edge train        (checkpoint.json, no        -            torch (bench)
                                   manifest)
==========  =====================  ==========================  ===========  ===========

The table also drives ``--backend auto``. This module sits low (errors, fileio, metadata only), so
the exporter, the quantiser, the engine builder, the runtime and ``bench`` can all import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .errors import AdtrError
from .fileio import read_json, sha256_file, write_json_atomic
from .metadata import FORMAT, GRAPHS, ModelMeta
from .postprocessing import finite_threshold

MANIFEST = "manifest.json"
CHECKPOINT_FILE = "checkpoint.json"  # adtr_edge.train.checkpoint.META_FILE, without importing torch
EXPORT_FORMAT = FORMAT
ENGINE_FORMAT = "adtr-edge-engine/1"


@dataclass(frozen=True)
class FolderKind:
    """One row of the table: what the manifest says and who runs the folder."""

    name: str  # the manifest's "kind"
    written_by: str
    format: Optional[str]  # the manifest's "format" (None: no manifest)
    files: Optional[str]  # the manifest key that lists the per-graph files
    backend: str  # what --backend auto picks
    what: str  # how an error message names it


ONNX, QDQ, TENSORRT, CHECKPOINT = "onnx", "onnx-qdq", "tensorrt", "checkpoint"
KINDS: Dict[str, FolderKind] = {
    ONNX: FolderKind(ONNX, "adtr-edge export", EXPORT_FORMAT, "graphs", "onnxruntime", "an ONNX export"),
    QDQ: FolderKind(QDQ, "adtr-edge quantize", EXPORT_FORMAT, "graphs", "onnxruntime", "a Q/DQ INT8 export"),
    TENSORRT: FolderKind(TENSORRT, "adtr-edge build-engine", ENGINE_FORMAT, "engines", "tensorrt", "a TensorRT engine folder"),
    CHECKPOINT: FolderKind(CHECKPOINT, "adtr-edge train", None, None, "torch", "a training checkpoint"),
}
ONNX_KINDS = tuple(k for k, v in KINDS.items() if v.files == "graphs")  # graphs that ONNX tools read
RUNTIME_KINDS = (ONNX, QDQ, TENSORRT)  # what the runtime (stream, Detector) loads: no torch there


@dataclass(frozen=True)
class ModelFolder:
    """A validated model folder: where it is, its kind, its manifest and metadata.

    ``meta`` is None only for a checkpoint, whose metadata is made from the torch model."""

    path: Path
    kind: str
    manifest: Dict[str, Any]
    meta: Optional[ModelMeta]

    @property
    def spec(self) -> FolderKind:
        return KINDS[self.kind]

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def is_onnx(self) -> bool:
        return self.kind in ONNX_KINDS

    def graph_file(self, graph: str) -> Path:
        """Path of one graph's file (ONNX graph or engine) as named by the manifest; a name that
        leaves the folder is refused (a manifest copied from elsewhere must not point outside)."""
        section = self.spec.files
        entry = self.manifest.get(section, {}).get(graph) if section else None
        if not isinstance(entry, dict) or not entry.get("file"):
            raise AdtrError(f"{self.path / MANIFEST}: no entry for graph '{graph}'")
        name = Path(str(entry["file"]))
        if name.is_absolute() or ".." in name.parts:
            raise AdtrError(f"{self.path / MANIFEST}: graph '{graph}' file {str(name)!r} must be a name inside the folder")
        return self.path / name


def read_model_folder(path: Union[str, Path], accept: Optional[Sequence[str]] = None, purpose: str = "") -> ModelFolder:
    """Read ``path`` (a model folder, or its manifest.json) and check its shape against the table.

    ``accept``: the kinds the caller can use (default: all); ``purpose`` names the caller in the
    message when the folder is of another kind, e.g. ``"build-engine"``."""
    p = Path(path)
    if p.is_file() and p.name == MANIFEST:
        p = p.parent
    if not p.exists():
        raise AdtrError(f"model folder not found: {p}")
    if not p.is_dir():
        raise AdtrError(f"not a model folder (expected a folder with {MANIFEST}): {p}")
    manifest_path = p / MANIFEST
    if not manifest_path.exists() and (p / CHECKPOINT_FILE).is_file():
        folder = ModelFolder(p, CHECKPOINT, {}, None)
    else:
        folder = _read_manifest_folder(p, manifest_path)
    if accept is not None and folder.kind not in accept:
        wanted = " or ".join(KINDS[k].what for k in accept)
        by = f" ({folder.spec.written_by})" if folder.spec.written_by else ""
        raise AdtrError(f"{p}: is {folder.spec.what}{by}; {purpose or 'this command'} needs {wanted}")
    return folder


def _read_manifest_folder(p: Path, manifest_path: Path) -> ModelFolder:
    manifest = read_json(manifest_path, missing=f"{p}: no {MANIFEST} (is this a folder written by 'adtr-edge export'?)")
    if not isinstance(manifest, dict):
        raise AdtrError(f"{manifest_path}: not an adtr-edge manifest (a JSON object is expected)")
    kind = manifest.get("kind")
    spec = KINDS.get(kind) if isinstance(kind, str) else None
    if spec is None or spec.format is None:
        raise AdtrError(f"{manifest_path}: kind {kind!r}, expected one of {[k for k, v in KINDS.items() if v.format]}")
    if manifest.get("format") != spec.format:
        raise AdtrError(f"{manifest_path}: format {manifest.get('format')!r}, expected {spec.format!r}")
    # Engine folders list their engines; that list is checked by adtr_edge.engine.manifest.
    if spec.files == "graphs" and not isinstance(manifest.get(spec.files), dict):
        raise AdtrError(f"{manifest_path}: lacks '{spec.files}'")
    meta = ModelMeta.validate(manifest.get("meta"), str(manifest_path))
    return ModelFolder(p, kind, manifest, meta)


def recorded_sha256(folder: ModelFolder) -> Dict[str, str]:
    """The sha256 the manifest records for each graph's file: an export's ONNX graphs, or an engine
    folder's engines (the ONNX graph an engine was built from where the engine's own is not listed).
    A missing entry is one error naming the manifest and the graph."""
    if folder.kind == TENSORRT:
        return {g: e.sha256 or e.onnx_sha256 or "" for g, e in engine_entries(folder).items()}
    graphs, out = folder.manifest.get("graphs"), {}
    for graph in GRAPHS:
        entry = graphs.get(graph) if isinstance(graphs, dict) else None
        if not isinstance(entry, dict) or not entry.get("sha256"):
            raise AdtrError(f"{folder.path / MANIFEST}: graph '{graph}' has no sha256")
        out[graph] = str(entry["sha256"])
    return out


def verify_graph_files(folder: ModelFolder) -> None:
    """Every ONNX graph file exists and has the sha256 the manifest recorded (a mixed-up or partly
    copied folder would otherwise run with the wrong weights or thresholds). Engine files are
    checked by ``verify_engine_files``."""
    for graph in GRAPHS:
        f = folder.graph_file(graph)
        if not f.is_file():
            raise AdtrError(f"{folder.path / MANIFEST}: graph file missing: {f}")
        expected = recorded_sha256(folder)[graph]
        actual = sha256_file(f)
        if actual != expected:
            raise AdtrError(
                f"{f}: sha256 {actual[:12]}... does not match {MANIFEST} ({str(expected)[:12]}...); "
                "the folder was modified or mixed with another export"
            )


@dataclass(frozen=True)
class EngineEntry:
    """One engine as an engine folder's manifest lists it (``build-engine`` writes the entry;
    ``engine_entries`` reads it). ``key`` is the digest of the engine's ``EngineKey``."""

    graph: str
    file: str
    precision: str
    profile: Tuple[int, int, int]
    sha256: Optional[str] = None
    key: Optional[str] = None
    dla_core: Optional[int] = None
    onnx_sha256: Optional[str] = None  # the ONNX graph it was built from


def engine_entries(folder: ModelFolder) -> Dict[str, EngineEntry]:
    """The engines an engine folder's manifest lists, typed, one per graph; a missing or malformed
    entry is one error naming the manifest and the graph (never a KeyError or AttributeError)."""
    where = folder.path / MANIFEST
    engines = folder.manifest.get("engines")
    if folder.kind != TENSORRT or not isinstance(engines, dict):
        raise AdtrError(f"{where}: not an engine folder's manifest (no 'engines' table)")
    out = {}
    for graph in GRAPHS:
        entry = engines.get(graph)
        if not isinstance(entry, dict):
            raise AdtrError(f"{where}: no '{graph}' engine listed")
        precision, profile, dla = entry.get("precision"), entry.get("profile"), entry.get("dla_core")
        if not isinstance(precision, str) or not precision:
            raise AdtrError(f"{where}: engine '{graph}' has no precision")
        if not (isinstance(profile, list) and len(profile) == 3 and all(isinstance(b, int) and not isinstance(b, bool) for b in profile)):
            raise AdtrError(f"{where}: engine '{graph}' profile {profile!r} is not [min, opt, max] batch sizes")
        if dla is not None and (isinstance(dla, bool) or not isinstance(dla, int)):
            raise AdtrError(f"{where}: engine '{graph}' dla_core {dla!r} is not a core number")
        out[graph] = EngineEntry(graph=graph, file=str(entry.get("file") or engine_file(folder.path, graph).name),
                                 precision=precision, profile=(profile[0], profile[1], profile[2]),
                                 sha256=entry.get("sha256"), key=entry.get("key"), dla_core=dla,
                                 onnx_sha256=entry.get("onnx_sha256"))
    return out


def engine_file(folder: Union[str, Path], graph: str) -> Path:
    """Where ``build-engine`` writes a graph's engine, and where the TensorRT backend loads it from."""
    return Path(folder) / f"{graph}.engine"


def rebuild_command(manifest: dict) -> str:
    """The command that rebuilds an engine folder's engines (what its errors tell the user to run)."""
    return manifest.get("build_command") or f"adtr-edge build-engine {manifest.get('source', '<export folder>')}"


def verify_engine_files(folder: Union[str, Path], manifest: dict) -> None:
    """Both engine files exist and have the sha256 the engine manifest recorded (what
    ``verify_graph_files`` is to an export); the message names the rebuild command."""
    rebuild = rebuild_command(manifest)
    for graph in GRAPHS:
        path = engine_file(folder, graph)
        if not path.is_file():
            raise AdtrError(f"{path}: engine file missing; rebuild with {rebuild}")
        if sha256_file(path) != manifest["engines"][graph].get("sha256"):
            raise AdtrError(f"{path}: engine file does not match its manifest (modified or half-copied); rebuild with {rebuild}")


def read_export(path: Union[str, Path], purpose: str = "") -> ModelFolder:
    """An ONNX export or Q/DQ folder with both graphs present and intact (what quantize and
    build-engine start from)."""
    folder = read_model_folder(path, accept=ONNX_KINDS, purpose=purpose)
    verify_graph_files(folder)
    return folder


# Only these keys decide what the graphs compute and how their outputs are read; a graph may add
# its own keys (its name, quantisation notes) without disagreeing with the manifest.
ESSENTIAL_META_KEYS = ("format", "model", "preprocess", "features", "postprocess")


def check_meta_agrees(graph_meta: ModelMeta, manifest_meta: ModelMeta, graph: str, source: str) -> None:
    """The metadata inside a graph says the same as the manifest (same model, same thresholds)."""
    if graph_meta.graph not in (None, graph):
        raise AdtrError(f"{source}: metadata says graph {graph_meta.graph!r}, the manifest lists it as {graph!r}")
    for key in ESSENTIAL_META_KEYS:
        if _comparable(graph_meta.raw, key) != _comparable(manifest_meta.raw, key):
            raise AdtrError(f"{source}: metadata '{key}' differs from {MANIFEST}; the graph belongs to another export")


# The decision threshold is applied on the host, not in the graphs, and ``save_threshold`` moves it
# in the manifest after export; the graph keeps the exported value. The calibration (score_min /
# score_max, which scale the normalised score) must still agree.
_HOST_DECIDED = ("threshold", "method")


def _comparable(meta: Dict[str, Any], key: str) -> Any:
    value = meta.get(key)
    if key != "postprocess" or not isinstance(value, dict) or not isinstance(value.get("thresholds"), dict):
        return value
    thresholds = {k: v for k, v in value["thresholds"].items() if k not in _HOST_DECIDED}
    return {**value, "thresholds": thresholds}


THRESHOLD_HISTORY = "threshold_history"  # manifest key: the thresholds replaced by save_threshold, oldest first


def save_threshold(path: Union[str, Path], threshold: float, by: str = "adtr-edge") -> Dict[str, Any]:
    """Make ``threshold`` the folder's decision threshold (what ``stream`` and ``Detector.load``
    use from then on), keeping the value it replaces in the manifest's ``threshold_history``.

    Works for every runtime kind (export, Q/DQ, engine folder): all keep the metadata in
    ``manifest.json``. The manifest is rewritten atomically (temp file + rename), so a reader or a
    crash never sees half of it. Returns the history entry it added."""
    import datetime as _dt

    value = finite_threshold(threshold, "threshold")
    folder = read_model_folder(path, accept=RUNTIME_KINDS, purpose="saving a threshold")
    manifest = dict(folder.manifest)
    meta = dict(manifest["meta"])
    post = dict(meta["postprocess"])
    old = dict(post["thresholds"])
    entry = {"threshold": old.get("threshold"), "method": old.get("method"),
             "replaced_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
             "replaced_by": by, "new_threshold": value}
    post["thresholds"] = {**old, "threshold": value, "method": "saved"}
    meta["postprocess"] = post
    manifest["meta"] = meta
    history = manifest.get(THRESHOLD_HISTORY)
    manifest[THRESHOLD_HISTORY] = (list(history) if isinstance(history, list) else []) + [entry]
    try:
        write_json_atomic(folder.path / MANIFEST, manifest)
    except OSError as e:
        raise AdtrError(f"{folder.path / MANIFEST}: cannot save the threshold ({e.strerror or e})") from None
    return entry
